//! Audio files <-> [`AudioClip`]: WAV through hound (8/16/24/32-bit integer and 32-bit float PCM,
//! any channel count and rate), FLAC and AIFF through symphonia, chosen by the file's first bytes
//! rather than its name, and WAV writing in every format hound reads.
//!
//! Sample scaling, one convention both ways (the one symphonia, libsndfile's reader and
//! torchaudio use): a `b`-bit integer `q` reads as `q / 2^(b-1)`, so the most negative code is
//! exactly -1.0 and the largest positive one is `1 - 2^(1-b)`; writing clamps to [-1, 1], takes
//! `round(x * 2^(b-1))` (half away from zero) and saturates at `2^(b-1) - 1`. Reading a written
//! file therefore returns each sample within half a quantisation step (`2^-b`), and within one
//! step next to +1.0. 32-bit float is stored as is (values outside [-1, 1] survive, as float WAV
//! allows).
//!
//! Exactness: an [`AudioClip`] holds f32, whose 24-bit mantissa holds every integer code of up to
//! 24 bits and every 32-bit float, so [`read_audio`] then [`write_wav`] in the file's own format
//! is bit-exact for those; 32-bit integer codes (and 64-bit floats) are rounded to f32.
//! [`read_audio_exact`] keeps the samples as f64 ([`ExactAudio`]), which holds every code of
//! every format read here without rounding, and [`write_wav_exact`] writes them back bit for bit
//! in any WAV format that can hold them ([`StoredFormat::exact_wav_format`]).
//!
//! Every failure is one line naming the file: missing, truncated, not audio, no samples, a sample
//! that is not a finite number (NaN or infinity in a float file), or an encoding neither decoder
//! supports.

use crate::clip::AudioClip;
use diffuse_tensor::{atomic, Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::Path;
use std::str::FromStr;

/// File extensions (lower case) read as audio when scanning folders.
pub fn audio_extensions() -> &'static [&'static str] {
    &["wav", "flac", "aif", "aiff"]
}

/// Whether `path` has one of [`audio_extensions`] (case-insensitive).
pub fn is_audio_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| audio_extensions().contains(&e.to_ascii_lowercase().as_str()))
}

/// How samples are stored in a written WAV file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleFormat {
    /// 8-bit integer (stored unsigned, as WAV requires).
    Int8,
    /// 16-bit integer, the CD format and the usual choice.
    Int16,
    /// 24-bit integer.
    Int24,
    /// 32-bit integer.
    Int32,
    /// 32-bit IEEE float.
    Float32,
}

impl SampleFormat {
    /// Bits per sample.
    pub fn bits(self) -> u16 {
        match self {
            SampleFormat::Int8 => 8,
            SampleFormat::Int16 => 16,
            SampleFormat::Int24 => 24,
            SampleFormat::Int32 | SampleFormat::Float32 => 32,
        }
    }

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SampleFormat::Int8 => "int8",
            SampleFormat::Int16 => "int16",
            SampleFormat::Int24 => "int24",
            SampleFormat::Int32 => "int32",
            SampleFormat::Float32 => "float32",
        }
    }
}

impl std::fmt::Display for SampleFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SampleFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let all = [
            SampleFormat::Int8,
            SampleFormat::Int16,
            SampleFormat::Int24,
            SampleFormat::Int32,
            SampleFormat::Float32,
        ];
        all.into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown sample format '{s}' (expected int8, int16, int24, int32 or float32)"
                ))
            })
    }
}

/// How a file stores its samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoredFormat {
    /// Integers of this many bits (1 to 32), signed or unsigned.
    Int(u32),
    /// 32-bit IEEE float.
    Float32,
    /// 64-bit IEEE float.
    Float64,
}

impl StoredFormat {
    /// The WAV format that holds every sample of this format exactly, if one does: integers go
    /// to the narrowest WAV integer width at least as wide (a `b`-bit code `q` is
    /// `q * 2^(B-b)` in `B` bits, the same value), 32-bit float to float32; 64-bit float has
    /// none.
    pub fn exact_wav_format(self) -> Option<SampleFormat> {
        match self {
            StoredFormat::Int(1..=8) => Some(SampleFormat::Int8),
            StoredFormat::Int(9..=16) => Some(SampleFormat::Int16),
            StoredFormat::Int(17..=24) => Some(SampleFormat::Int24),
            StoredFormat::Int(25..=32) => Some(SampleFormat::Int32),
            StoredFormat::Float32 => Some(SampleFormat::Float32),
            StoredFormat::Int(_) | StoredFormat::Float64 => None,
        }
    }
}

impl std::fmt::Display for StoredFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoredFormat::Int(bits) => write!(f, "{bits}-bit integer"),
            StoredFormat::Float32 => f.write_str("32-bit float"),
            StoredFormat::Float64 => f.write_str("64-bit float"),
        }
    }
}

/// Audio with every sample exactly as a file stored it: f64 holds every integer code of up to
/// 32 bits (as `q / 2^(b-1)`) and every 32- or 64-bit float sample without rounding, which an
/// [`AudioClip`]'s f32 does not (32-bit codes have more bits than its mantissa). For edits that
/// must leave the samples they do not touch bit for bit as they were.
#[derive(Clone, Debug, PartialEq)]
pub struct ExactAudio {
    /// Frames per second, > 0.
    pub sample_rate: u32,
    /// Channel-major samples, every channel the same length.
    pub channels: Vec<Vec<f64>>,
    /// How the file stored them (`None`: made in memory, e.g. from a clip).
    pub stored: Option<StoredFormat>,
}

impl ExactAudio {
    /// Audio from channel-major samples; errors on rate 0, no channels or unequal lengths.
    pub fn new(
        sample_rate: u32,
        channels: Vec<Vec<f64>>,
        stored: Option<StoredFormat>,
    ) -> Result<Self> {
        // The clip's constructor holds the rules; checking an empty stand-in of the same shape
        // keeps them in one place.
        AudioClip::new(
            sample_rate,
            channels.iter().map(|c| vec![0.0; c.len()]).collect(),
        )?;
        Ok(ExactAudio {
            sample_rate,
            channels,
            stored,
        })
    }

    /// The samples of `clip`, marked as not from a file.
    pub fn from_clip(clip: &AudioClip) -> Self {
        ExactAudio {
            sample_rate: clip.sample_rate,
            channels: clip
                .channels
                .iter()
                .map(|c| c.iter().map(|&x| x as f64).collect())
                .collect(),
            stored: None,
        }
    }

    /// The samples as an f32 clip (rounded to the nearest f32; exact for every format but 32-bit
    /// integers and 64-bit floats).
    pub fn to_clip(&self) -> AudioClip {
        AudioClip {
            sample_rate: self.sample_rate,
            channels: self
                .channels
                .iter()
                .map(|c| c.iter().map(|&x| x as f32).collect())
                .collect(),
        }
    }

    /// Frames (samples per channel).
    pub fn frames(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    /// Number of channels.
    pub fn num_channels(&self) -> usize {
        self.channels.len()
    }

    /// Replace the frames in `range` with those of `clip` (the same rate, channels and length);
    /// every other sample stays exactly as it is.
    pub fn splice(&mut self, range: std::ops::Range<usize>, clip: &AudioClip) -> Result<()> {
        if clip.sample_rate != self.sample_rate
            || clip.num_channels() != self.num_channels()
            || clip.frames() != self.frames()
            || range.start > range.end
            || range.end > self.frames()
        {
            return Err(Error::InvalidArgument(format!(
                "cannot splice frames {range:?} of {} frame(s) x {} channel(s) at {} Hz into {} \
                 frame(s) x {} channel(s) at {} Hz",
                clip.frames(),
                clip.num_channels(),
                clip.sample_rate,
                self.frames(),
                self.num_channels(),
                self.sample_rate
            )));
        }
        for (mine, theirs) in self.channels.iter_mut().zip(&clip.channels) {
            for (m, &t) in mine[range.clone()].iter_mut().zip(&theirs[range.clone()]) {
                *m = t as f64;
            }
        }
        Ok(())
    }
}

/// Read a WAV, FLAC or AIFF file (format from its content, whatever its extension).
pub fn read_audio(path: &Path) -> Result<AudioClip> {
    Ok(read_audio_exact(path)?.to_clip())
}

/// Decode WAV, FLAC or AIFF bytes; `origin` names the source in error messages.
pub fn read_audio_bytes(bytes: &[u8], origin: &Path) -> Result<AudioClip> {
    Ok(read_audio_exact_bytes(bytes, origin)?.to_clip())
}

/// Read a WAV, FLAC or AIFF file keeping every sample exactly as stored (see [`ExactAudio`]).
pub fn read_audio_exact(path: &Path) -> Result<ExactAudio> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    read_audio_exact_bytes(&bytes, path)
}

/// [`read_audio_exact`] on bytes in memory; `origin` names the source in error messages.
pub fn read_audio_exact_bytes(bytes: &[u8], origin: &Path) -> Result<ExactAudio> {
    let container = Container::sniff(bytes).ok_or_else(|| {
        let shown: String = bytes
            .iter()
            .take(4)
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
            .collect();
        Error::format(
            origin,
            if bytes.is_empty() {
                "not an audio file: the file is empty".to_owned()
            } else {
                format!(
                    "not a WAV, FLAC or AIFF file (it starts with \"{shown}\", {} bytes in all)",
                    bytes.len()
                )
            },
        )
    })?;
    let audio = match container {
        // hound reads little-endian RIFF only; RIFX and RF64 go to symphonia directly.
        Container::Wav if !bytes.starts_with(b"RIFF") => read_symphonia(bytes, origin, "wav")?,
        Container::Wav => match read_wav_hound(bytes, origin) {
            // WAV encodings hound does not decode (64-bit float, A-law, mu-law) may still be
            // ones symphonia does; keep hound's verdict if symphonia cannot either.
            Err(Unsupported(reason)) => {
                read_symphonia(bytes, origin, "wav").map_err(|_| Error::format(origin, reason))?
            }
            Ok(audio) => audio,
            Err(Failed(e)) => return Err(e),
        },
        Container::Flac => read_symphonia(bytes, origin, "flac")?,
        Container::Aiff => read_symphonia(bytes, origin, "aiff")?,
    };
    if audio.frames() == 0 {
        return Err(Error::format(origin, "the clip has no samples"));
    }
    check_finite(&audio, origin)?;
    Ok(audio)
}

/// Refuse a sample that is NaN, infinite or too large for f32 (float files can hold all three):
/// one such sample would turn a network's output, or a training loss, into NaN, far from the
/// file that caused it. The error names the first one in time and counts the rest.
fn check_finite(audio: &ExactAudio, origin: &Path) -> Result<()> {
    let bad = |x: f64| x.is_nan() || x.abs() > f32::MAX as f64;
    let first = audio
        .channels
        .iter()
        .enumerate()
        .filter_map(|(c, ch)| ch.iter().position(|&x| bad(x)).map(|i| (i, c)))
        .min();
    let Some((frame, channel)) = first else {
        return Ok(());
    };
    let count: usize = audio
        .channels
        .iter()
        .map(|ch| ch.iter().filter(|&&x| bad(x)).count())
        .sum();
    let x = audio.channels[channel][frame];
    let what = if x.is_nan() {
        "NaN".to_owned()
    } else if x.is_infinite() {
        format!("{}infinity", if x < 0.0 { "-" } else { "+" })
    } else {
        format!("{x:e}, beyond the range of 32-bit floats")
    };
    let more = match count - 1 {
        0 => String::new(),
        1 => " (and 1 more such sample)".to_owned(),
        n => format!(" (and {n} more such samples)"),
    };
    Err(Error::format(
        origin,
        format!(
            "the sample at frame {frame} ({:.6} s), channel {} of {}, is {what}{more}; audio samples \
             must be finite numbers",
            frame as f64 / audio.sample_rate as f64,
            channel + 1,
            audio.num_channels()
        ),
    ))
}

/// Container formats told apart by their magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Container {
    Wav,
    Flac,
    Aiff,
}

impl Container {
    fn sniff(bytes: &[u8]) -> Option<Container> {
        let tag = |at: usize, t: &[u8]| bytes.get(at..at + t.len()) == Some(t);
        if (tag(0, b"RIFF") || tag(0, b"RIFX") || tag(0, b"RF64")) && tag(8, b"WAVE") {
            Some(Container::Wav)
        } else if tag(0, b"fLaC") || tag(0, b"ID3") {
            // FLAC files sometimes carry an ID3v2 tag in front of the stream marker.
            Some(Container::Flac)
        } else if tag(0, b"FORM") && (tag(8, b"AIFF") || tag(8, b"AIFC")) {
            Some(Container::Aiff)
        } else {
            None
        }
    }
}

/// Why hound did not return a clip: an encoding it lacks (worth a second decoder) or a
/// definite failure.
enum HoundOutcome {
    Unsupported(String),
    Failed(Error),
}
use HoundOutcome::{Failed, Unsupported};

fn read_wav_hound(bytes: &[u8], origin: &Path) -> std::result::Result<ExactAudio, HoundOutcome> {
    // hound refuses encodings it lacks either as Unsupported or as a FormatError (64-bit float
    // is "bits per sample is not 32"): both are worth a try with symphonia.
    let reader = hound::WavReader::new(Cursor::new(bytes)).map_err(|e| match e {
        hound::Error::Unsupported => {
            Unsupported("unsupported WAV encoding (not integer or 32-bit float PCM)".into())
        }
        hound::Error::FormatError(msg) => Unsupported(format!(
            "not a valid WAV file, or an unsupported WAV encoding: {msg}"
        )),
        other => Failed(hound_error(origin, other, "the WAV header")),
    })?;
    let spec = reader.spec();
    let channels = spec.channels as usize;
    if channels == 0 {
        return Err(Failed(Error::format(
            origin,
            "the WAV header declares 0 channels",
        )));
    }
    if spec.sample_rate == 0 {
        return Err(Failed(Error::format(
            origin,
            "the WAV header declares a sample rate of 0 Hz",
        )));
    }
    // f64 holds every code exactly (see ExactAudio); the scale is a power of two.
    let (interleaved, stored): (Vec<f64>, StoredFormat) =
        match (spec.sample_format, spec.bits_per_sample) {
            (hound::SampleFormat::Float, 32) => (
                collect(reader.into_samples::<f32>(), |x| x as f64, origin)?,
                StoredFormat::Float32,
            ),
            (hound::SampleFormat::Int, bits @ 1..=32) => {
                let scale = 1.0 / 2f64.powi(bits as i32 - 1);
                let samples = if bits <= 8 {
                    collect(reader.into_samples::<i8>(), |q| q as f64 * scale, origin)?
                } else if bits <= 16 {
                    collect(reader.into_samples::<i16>(), |q| q as f64 * scale, origin)?
                } else {
                    collect(reader.into_samples::<i32>(), |q| q as f64 * scale, origin)?
                };
                (samples, StoredFormat::Int(bits as u32))
            }
            (format, bits) => {
                return Err(Unsupported(format!(
                    "unsupported WAV sample format: {bits}-bit {}",
                    if format == hound::SampleFormat::Float {
                        "float"
                    } else {
                        "integer"
                    }
                )))
            }
        };
    let frames = interleaved.len() / channels;
    let planar = (0..channels)
        .map(|c| (0..frames).map(|i| interleaved[i * channels + c]).collect())
        .collect();
    ExactAudio::new(spec.sample_rate, planar, Some(stored)).map_err(Failed)
}

/// Collect hound's samples, converting each; a short read means the file was cut off.
fn collect<S, I>(
    samples: I,
    convert: impl Fn(S) -> f64,
    origin: &Path,
) -> std::result::Result<Vec<f64>, HoundOutcome>
where
    I: Iterator<Item = hound::Result<S>>,
{
    let (lower, _) = samples.size_hint();
    let mut out = Vec::with_capacity(lower);
    for (i, s) in samples.enumerate() {
        match s {
            Ok(s) => out.push(convert(s)),
            // The bytes are in memory, so a read error can only mean they ran out (hound reports
            // that as "Failed to read enough bytes", not always as UnexpectedEof).
            Err(hound::Error::IoError(_)) => {
                return Err(Failed(Error::format(
                    origin,
                    format!(
                        "truncated WAV: the file ends after {i} of the {lower} samples its header declares"
                    ),
                )));
            }
            Err(e) => return Err(Failed(hound_error(origin, e, "the WAV samples"))),
        }
    }
    Ok(out)
}

fn hound_error(origin: &Path, e: hound::Error, what: &str) -> Error {
    match e {
        hound::Error::IoError(_) => Error::format(
            origin,
            format!("truncated WAV: the file ends inside {what}"),
        ),
        hound::Error::FormatError(msg) => {
            Error::format(origin, format!("not a valid WAV file: {msg}"))
        }
        other => Error::format(origin, format!("cannot read {what}: {other}")),
    }
}

/// Decode FLAC, AIFF (or a WAV encoding hound lacks) with symphonia, all packets of the first
/// audio track, as f64 (symphonia scales integers by 2^(b-1), the convention of this module,
/// and f64 holds every code exactly).
fn read_symphonia(bytes: &[u8], origin: &Path, kind: &str) -> Result<ExactAudio> {
    use symphonia::core::codecs::audio::AudioDecoderOptions;
    use symphonia::core::errors::Error as SymError;
    use symphonia::core::formats::probe::Hint;
    use symphonia::core::formats::{FormatOptions, TrackType};
    use symphonia::core::io::MediaSourceStream;
    use symphonia::core::meta::MetadataOptions;

    let label = kind.to_ascii_uppercase();
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        let message = one_line(&e.to_string());
        Error::format(origin, format!("cannot decode {label}: {what}: {message}"))
    };
    let truncated = || Error::format(origin, format!("truncated {label}: the file ends early"));
    let source = MediaSourceStream::new(Box::new(Cursor::new(bytes.to_vec())), Default::default());
    let mut hint = Hint::new();
    hint.with_extension(kind);
    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            source,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| match e {
            SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => truncated(),
            other => fail("not a readable file", &other),
        })?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| Error::format(origin, format!("no audio track in this {label} file")))?;
    let track_id = track.id;
    let declared_frames = track.num_frames;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| {
            Error::format(
                origin,
                format!("no audio codec parameters in this {label} file"),
            )
        })?
        .clone();
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| fail("unsupported codec", &e))?;
    let mut channels: Vec<Vec<f64>> = Vec::new();
    let mut rate = params.sample_rate.unwrap_or(0);
    let mut planes: Vec<Vec<f64>> = Vec::new();
    // Integer width or float kind of the decoded buffers.
    let mut buffer_format = None;
    loop {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            Err(SymError::IoError(io)) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(truncated())
            }
            Err(e) => return Err(fail("bad packet", &e)),
        };
        if packet.track_id != track_id {
            continue;
        }
        let decoded = decoder.decode(&packet).map_err(|e| match e {
            SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => truncated(),
            other => fail("corrupt audio data", &other),
        })?;
        let spec = decoded.spec();
        rate = spec.rate();
        buffer_format = Some(buffer_format_of(&decoded));
        decoded.copy_to_vecs_planar::<f64>(&mut planes);
        if channels.is_empty() {
            channels = vec![Vec::new(); planes.len()];
        }
        if planes.len() != channels.len() {
            return Err(Error::format(
                origin,
                format!(
                    "the channel count changes from {} to {} inside the stream",
                    channels.len(),
                    planes.len()
                ),
            ));
        }
        for (all, new) in channels.iter_mut().zip(&planes) {
            all.extend_from_slice(new);
        }
    }
    let decoded = channels.first().map_or(0, Vec::len) as u64;
    if let Some(declared) = declared_frames.filter(|&d| decoded < d) {
        // A FLAC reader stops quietly at the first frame it cannot find; the header's frame
        // count is what tells a cut or damaged file from a short one.
        return Err(Error::format(
            origin,
            format!(
                "truncated or corrupt {label}: decoded {decoded} of the {declared} frames its header declares"
            ),
        ));
    }
    if channels.is_empty() {
        let count = params.channels.as_ref().map_or(1, |c| c.count()).max(1);
        channels = vec![Vec::new(); count];
    }
    if rate == 0 {
        return Err(Error::format(
            origin,
            format!("the {label} stream declares no sample rate"),
        ));
    }
    let stored = buffer_format.map(|format| match format {
        // Decoders widen codes to their buffer's type (FLAC puts 24-bit audio in 32-bit
        // buffers); the declared bit depth is the real one when the samples bear it out.
        StoredFormat::Int(width) => match params.bits_per_sample {
            Some(bits) if bits < width && fits_integer_codes(&channels, bits) => {
                StoredFormat::Int(bits)
            }
            _ => StoredFormat::Int(width),
        },
        float => float,
    });
    ExactAudio::new(rate, channels, stored).map_err(|e| Error::format(origin, e.to_string()))
}

/// The sample type of a decoded symphonia buffer.
fn buffer_format_of(buffer: &symphonia::core::audio::GenericAudioBufferRef<'_>) -> StoredFormat {
    use symphonia::core::audio::GenericAudioBufferRef as B;
    match buffer {
        B::U8(_) | B::S8(_) => StoredFormat::Int(8),
        B::U16(_) | B::S16(_) => StoredFormat::Int(16),
        B::U24(_) | B::S24(_) => StoredFormat::Int(24),
        B::U32(_) | B::S32(_) => StoredFormat::Int(32),
        B::F32(_) => StoredFormat::Float32,
        B::F64(_) => StoredFormat::Float64,
    }
}

/// Whether every sample is a `bits`-bit code `q / 2^(bits-1)`.
fn fits_integer_codes(channels: &[Vec<f64>], bits: u32) -> bool {
    let full = 2f64.powi(bits as i32 - 1);
    (1..=32).contains(&bits)
        && channels.iter().flatten().all(|&x| {
            let q = x * full;
            q == q.round() && (-full..full).contains(&q)
        })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Integer code of `x` for `bits`-bit PCM: clamp to [-1, 1], `round(x * 2^(bits-1))`, saturate
/// at `2^(bits-1) - 1`; NaN becomes 0. Exact in f64 for every width up to 32 bits, so a code read
/// as `q / 2^(bits-1)` comes back as `q`.
fn quantize(x: f64, bits: u16) -> i32 {
    let full = 2f64.powi(bits as i32 - 1);
    let q = (x.clamp(-1.0, 1.0) * full).round();
    if q.is_nan() {
        0
    } else {
        q.clamp(-full, full - 1.0) as i32
    }
}

/// Write `clip` as a WAV file in `format`, atomically (a temporary file renamed into place, so a
/// crash never leaves half a file). Integer formats clamp to [-1, 1] (see the module docs for the
/// scaling); a clip without samples is refused.
pub fn write_wav(path: &Path, clip: &AudioClip, format: SampleFormat) -> Result<()> {
    write_samples(
        path,
        clip.sample_rate,
        clip.num_channels(),
        clip.frames(),
        |c, i| clip.channels[c][i] as f64,
        format,
    )
}

/// [`write_wav`] for [`ExactAudio`]: samples read by [`read_audio_exact`] come back bit for bit
/// when `format` is one that holds them ([`StoredFormat::exact_wav_format`]).
pub fn write_wav_exact(path: &Path, audio: &ExactAudio, format: SampleFormat) -> Result<()> {
    write_samples(
        path,
        audio.sample_rate,
        audio.num_channels(),
        audio.frames(),
        |c, i| audio.channels[c][i],
        format,
    )
}

fn write_samples(
    path: &Path,
    sample_rate: u32,
    num_channels: usize,
    frames: usize,
    sample: impl Fn(usize, usize) -> f64,
    format: SampleFormat,
) -> Result<()> {
    if frames == 0 {
        return Err(Error::InvalidArgument(format!(
            "{}: refusing to write an audio clip with no samples",
            path.display()
        )));
    }
    let channels = u16::try_from(num_channels)
        .ok()
        .filter(|&c| c > 0)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}: cannot write {num_channels} channels to a WAV file",
                path.display(),
            ))
        })?;
    let spec = hound::WavSpec {
        channels,
        sample_rate,
        bits_per_sample: format.bits(),
        sample_format: if format == SampleFormat::Float32 {
            hound::SampleFormat::Float
        } else {
            hound::SampleFormat::Int
        },
    };
    // A data chunk is limited to 4 GiB by its 32-bit length field.
    let bytes = frames as u64 * channels as u64 * format.bits() as u64 / 8;
    if bytes > u32::MAX as u64 - 64 {
        return Err(Error::InvalidArgument(format!(
            "{}: {bytes} bytes of samples do not fit in a WAV file (4 GiB at most)",
            path.display()
        )));
    }
    let to_io = |e: hound::Error| match e {
        hound::Error::IoError(io) => io,
        other => std::io::Error::other(other.to_string()),
    };
    atomic::write_atomic(path, |w| {
        let mut writer = hound::WavWriter::new(w, spec).map_err(to_io)?;
        for i in 0..frames {
            for c in 0..num_channels {
                let x = sample(c, i);
                match format {
                    SampleFormat::Float32 => writer.write_sample(x as f32),
                    SampleFormat::Int8 => writer.write_sample(quantize(x, 8) as i8),
                    SampleFormat::Int16 => writer.write_sample(quantize(x, 16) as i16),
                    SampleFormat::Int24 => writer.write_sample(quantize(x, 24)),
                    SampleFormat::Int32 => writer.write_sample(quantize(x, 32)),
                }
                .map_err(to_io)?;
            }
        }
        writer.finalize().map_err(to_io)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantisation_convention() {
        assert_eq!(quantize(-1.0, 16), -32768);
        assert_eq!(quantize(1.0, 16), 32767);
        assert_eq!(quantize(2.0, 8), 127);
        assert_eq!(quantize(0.5, 8), 64);
        assert_eq!(quantize(-0.5 / 128.0, 8), -1); // half away from zero
        assert_eq!(quantize(f64::NAN, 24), 0);
        assert_eq!(quantize(-1.0, 32), i32::MIN);
        assert_eq!(quantize(1.0, 32), i32::MAX);
        // Every 32-bit code survives reading (q / 2^31 in f64) and writing.
        for q in [i32::MIN, -123_456_789, -1, 0, 1, 0x7654_3211, i32::MAX] {
            assert_eq!(quantize(q as f64 / 2f64.powi(31), 32), q);
        }
    }

    #[test]
    fn sample_format_names() {
        for name in ["int8", "int16", "int24", "int32", "float32"] {
            let f: SampleFormat = name.parse().unwrap();
            assert_eq!(f.to_string(), name);
            assert_eq!(serde_json::to_string(&f).unwrap(), format!("\"{name}\""));
        }
        let err = "int12".parse::<SampleFormat>().unwrap_err().to_string();
        assert!(err.contains("int12") && err.contains("float32"), "{err}");
    }

    #[test]
    fn sniffing() {
        assert_eq!(
            Container::sniff(b"RIFF\0\0\0\0WAVEfmt "),
            Some(Container::Wav)
        );
        assert_eq!(Container::sniff(b"fLaC\0\0\0\x22"), Some(Container::Flac));
        assert_eq!(
            Container::sniff(b"FORM\0\0\0\0AIFFCOMM"),
            Some(Container::Aiff)
        );
        assert_eq!(Container::sniff(b"hello, world"), None);
        assert!(is_audio_path(Path::new("a/b.WAV")) && !is_audio_path(Path::new("a.txt")));
    }
}
