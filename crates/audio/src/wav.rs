//! Audio files <-> [`AudioClip`]: WAV through hound (8/16/24/32-bit integer and 32-bit float PCM,
//! any channel count and rate), FLAC and AIFF through symphonia, chosen by the file's first bytes
//! rather than its name, and WAV writing in every format hound reads.
//!
//! Sample scaling, one convention both ways (the one symphonia, libsndfile's reader and
//! torchaudio use): a `b`-bit integer `q` reads as `q / 2^(b-1)`, so the most negative code is
//! exactly -1.0 and the largest positive one is `1 - 2^(1-b)`; writing clamps to [-1, 1], takes
//! `round(x * 2^(b-1))` (half away from zero) and saturates at `2^(b-1) - 1`. Reading a written
//! file therefore returns each sample within half a quantisation step (`2^-b`), and within one
//! step next to +1.0; writing a read integer file is bit-exact. 32-bit float is stored as is
//! (values outside [-1, 1] survive, as float WAV allows).
//!
//! Every failure is one line naming the file: missing, truncated, not audio, no samples, or an
//! encoding neither decoder supports.

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

/// Read a WAV, FLAC or AIFF file (format from its content, whatever its extension).
pub fn read_audio(path: &Path) -> Result<AudioClip> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    read_audio_bytes(&bytes, path)
}

/// Decode WAV, FLAC or AIFF bytes; `origin` names the source in error messages.
pub fn read_audio_bytes(bytes: &[u8], origin: &Path) -> Result<AudioClip> {
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
    let clip = match container {
        // hound reads little-endian RIFF only; RIFX and RF64 go to symphonia directly.
        Container::Wav if !bytes.starts_with(b"RIFF") => read_symphonia(bytes, origin, "wav")?,
        Container::Wav => match read_wav_hound(bytes, origin) {
            // WAV encodings hound does not decode (64-bit float, A-law, mu-law) may still be
            // ones symphonia does; keep hound's verdict if symphonia cannot either.
            Err(Unsupported(reason)) => {
                read_symphonia(bytes, origin, "wav").map_err(|_| Error::format(origin, reason))?
            }
            Ok(clip) => clip,
            Err(Failed(e)) => return Err(e),
        },
        Container::Flac => read_symphonia(bytes, origin, "flac")?,
        Container::Aiff => read_symphonia(bytes, origin, "aiff")?,
    };
    if clip.frames() == 0 {
        return Err(Error::format(origin, "the clip has no samples"));
    }
    Ok(clip)
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

fn read_wav_hound(bytes: &[u8], origin: &Path) -> std::result::Result<AudioClip, HoundOutcome> {
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
    let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => collect(reader.into_samples::<f32>(), |x| x, origin)?,
        (hound::SampleFormat::Int, bits @ 1..=32) => {
            let scale = 1.0 / 2f64.powi(bits as i32 - 1);
            if bits <= 8 {
                collect(
                    reader.into_samples::<i8>(),
                    |q| (q as f64 * scale) as f32,
                    origin,
                )?
            } else if bits <= 16 {
                collect(
                    reader.into_samples::<i16>(),
                    |q| (q as f64 * scale) as f32,
                    origin,
                )?
            } else {
                collect(
                    reader.into_samples::<i32>(),
                    |q| (q as f64 * scale) as f32,
                    origin,
                )?
            }
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
    AudioClip::new(spec.sample_rate, planar).map_err(Failed)
}

/// Collect hound's samples, converting each; a short read means the file was cut off.
fn collect<S, I>(
    samples: I,
    convert: impl Fn(S) -> f32,
    origin: &Path,
) -> std::result::Result<Vec<f32>, HoundOutcome>
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
/// audio track, as f32 (symphonia scales integers by 2^(b-1), the convention of this module).
fn read_symphonia(bytes: &[u8], origin: &Path, kind: &str) -> Result<AudioClip> {
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
    let mut channels: Vec<Vec<f32>> = Vec::new();
    let mut rate = params.sample_rate.unwrap_or(0);
    let mut planes: Vec<Vec<f32>> = Vec::new();
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
        decoded.copy_to_vecs_planar::<f32>(&mut planes);
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
    AudioClip::new(rate, channels).map_err(|e| Error::format(origin, e.to_string()))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Integer code of `x` for `bits`-bit PCM: clamp to [-1, 1], `round(x * 2^(bits-1))`, saturate
/// at `2^(bits-1) - 1`; NaN becomes 0.
fn quantize(x: f32, bits: u16) -> i32 {
    let full = 2f64.powi(bits as i32 - 1);
    let q = (x.clamp(-1.0, 1.0) as f64 * full).round();
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
    if clip.frames() == 0 {
        return Err(Error::InvalidArgument(format!(
            "{}: refusing to write an audio clip with no samples",
            path.display()
        )));
    }
    let channels = u16::try_from(clip.num_channels())
        .ok()
        .filter(|&c| c > 0)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}: cannot write {} channels to a WAV file",
                path.display(),
                clip.num_channels()
            ))
        })?;
    let spec = hound::WavSpec {
        channels,
        sample_rate: clip.sample_rate,
        bits_per_sample: format.bits(),
        sample_format: if format == SampleFormat::Float32 {
            hound::SampleFormat::Float
        } else {
            hound::SampleFormat::Int
        },
    };
    // A data chunk is limited to 4 GiB by its 32-bit length field.
    let bytes = clip.frames() as u64 * channels as u64 * format.bits() as u64 / 8;
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
        for i in 0..clip.frames() {
            for ch in &clip.channels {
                let x = ch[i];
                match format {
                    SampleFormat::Float32 => writer.write_sample(x),
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
        assert_eq!(quantize(f32::NAN, 24), 0);
        assert_eq!(quantize(-1.0, 32), i32::MIN);
        assert_eq!(quantize(1.0, 32), i32::MAX);
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
