//! Audio files: WAV round trips in every sample format with error bounds from the quantisation
//! step, the byte-level scaling convention, FLAC/AIFF/WAV decoding of real files against golden
//! values from libsndfile and Python's aifc/wave (tests/golden/make_decode_golden.py), and one
//! clear error naming the file for every kind of bad input.

use diffuse_audio::clip::AudioClip;
use diffuse_audio::wav::{audio_extensions, read_audio, write_wav, SampleFormat};
use std::path::{Path, PathBuf};

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn speech_digits_dir() -> PathBuf {
    manifest().join("../../data/fixtures/speech-digits")
}

pub fn fixture(name: &str) -> PathBuf {
    manifest().join("tests/fixtures").join(name)
}

fn golden() -> serde_json::Value {
    let path = manifest().join("tests/golden/decode_golden.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// A test signal that exercises every code path: a sine, full-scale and out-of-range values.
fn test_signal(frames: usize, channel: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..frames)
        .map(|i| 0.9 * ((i as f32 * 0.0137 * (channel + 1) as f32) + channel as f32).sin())
        .collect();
    let specials = [-1.0, 1.0, 1.5, -2.0, 0.0, 1e-9, -0.999_999, 0.5];
    x[..specials.len()].copy_from_slice(&specials);
    x
}

fn check_against_golden(clip: &AudioClip, g: &serde_json::Value, exact: bool) {
    let name = g["file"].as_str().unwrap();
    assert_eq!(
        clip.sample_rate as u64,
        g["sample_rate"].as_u64().unwrap(),
        "{name}"
    );
    assert_eq!(
        clip.num_channels() as u64,
        g["channels"].as_u64().unwrap(),
        "{name}"
    );
    assert_eq!(
        clip.frames() as u64,
        g["frames"].as_u64().unwrap(),
        "{name}"
    );
    for (c, expected) in g["sum_of_squares"].as_array().unwrap().iter().enumerate() {
        let expected = expected.as_f64().unwrap();
        let got: f64 = clip.channels[c].iter().map(|&x| x as f64 * x as f64).sum();
        assert!(
            (got - expected).abs() <= 1e-6 * expected.max(1e-3),
            "{name} channel {c}: sum of squares {got} vs {expected}"
        );
    }
    assert!((clip.peak() as f64 - g["peak"].as_f64().unwrap()).abs() < 1e-7);
    for (frame, values) in g["samples"].as_object().unwrap() {
        let i: usize = frame.parse().unwrap();
        for (c, v) in values.as_array().unwrap().iter().enumerate() {
            let (got, want) = (clip.channels[c][i] as f64, v.as_f64().unwrap());
            // Integer samples / 2^(b-1) are exact in f32 up to 24 bits.
            let tol = if exact { 0.0 } else { 1e-7 };
            assert!(
                (got - want).abs() <= tol,
                "{name} [{c}][{i}]: {got} vs {want}"
            );
        }
    }
}

#[test]
fn wav_round_trips_in_every_format_within_the_quantisation_step() {
    let dir = tempfile::tempdir().unwrap();
    let formats = [
        SampleFormat::Int8,
        SampleFormat::Int16,
        SampleFormat::Int24,
        SampleFormat::Int32,
        SampleFormat::Float32,
    ];
    let rates = [8000, 22050, 44100, 48000];
    for (k, &format) in formats.iter().enumerate() {
        for channels in [1usize, 2, 3] {
            let rate = rates[(k + channels) % rates.len()];
            let frames = 1000 + 37 * k;
            let clip = AudioClip::new(
                rate,
                (0..channels).map(|c| test_signal(frames, c)).collect(),
            )
            .unwrap();
            let path = dir.path().join(format!("{format}-{channels}.wav"));
            write_wav(&path, &clip, format).unwrap();
            let back = read_audio(&path).unwrap();
            assert_eq!(
                (back.sample_rate, back.num_channels(), back.frames()),
                (rate, channels, frames)
            );
            let mut max_err = 0f64;
            for (a, b) in clip.channels.iter().zip(&back.channels) {
                for (&x, &y) in a.iter().zip(b) {
                    if format == SampleFormat::Float32 {
                        assert_eq!(x.to_bits(), y.to_bits(), "float32 is stored as is");
                        continue;
                    }
                    let step = 2f64.powi(1 - format.bits() as i32);
                    let target = (x as f64).clamp(-1.0, 1.0);
                    let err = (y as f64 - target).abs();
                    // Half a step, a whole one next to +1 (which saturates at 1 - step), and
                    // f32's own rounding for the 32-bit codes.
                    let bound = if target > 1.0 - step {
                        step
                    } else {
                        0.5 * step
                    } + 6e-8 * target.abs();
                    assert!(
                        err <= bound,
                        "{format}: {x} -> {y} (error {err:e} > {bound:e})"
                    );
                    if target.abs() < 1.0 - step {
                        max_err = max_err.max(err / step);
                    }
                }
            }
            if channels == 1 {
                println!("{format} at {rate} Hz: largest error {max_err:.3} quantisation steps");
            }
        }
    }
}

#[test]
fn integer_codes_follow_the_documented_scaling() {
    let dir = tempfile::tempdir().unwrap();
    let values = vec![
        -1.0f32,
        -0.5,
        0.0,
        0.5,
        1.0,
        1.5,
        -0.25 / 32768.0,
        0.75 / 32768.0,
    ];
    let clip = AudioClip::new(8000, vec![values.clone()]).unwrap();
    let path = dir.path().join("codes.wav");
    write_wav(&path, &clip, SampleFormat::Int16).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let data = &bytes[bytes.len() - 2 * values.len()..];
    let codes: Vec<i16> = data
        .chunks(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert_eq!(codes, [-32768, -16384, 0, 16384, 32767, 32767, 0, 1]);
    let back = read_audio(&path).unwrap();
    assert_eq!(back.channels[0][0], -1.0);
    assert_eq!(back.channels[0][1], -0.5);
    assert_eq!(back.channels[0][4], 32767.0 / 32768.0);

    // 8-bit WAV is unsigned with 128 as zero.
    write_wav(&path, &clip, SampleFormat::Int8).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let data = &bytes[bytes.len() - values.len()..];
    assert_eq!(data, [0, 64, 128, 192, 255, 255, 128, 128]);
}

#[test]
fn reads_the_committed_speech_fixture_like_python_wave() {
    let g = golden();
    for digit in g["speech_digits"].as_array().unwrap() {
        let path = manifest()
            .join("../..")
            .join(digit["file"].as_str().unwrap());
        let clip = read_audio(&path).unwrap();
        check_against_golden(&clip, digit, true);
    }
    let zero = read_audio(&speech_digits_dir().join("0.wav")).unwrap();
    println!(
        "0.wav: {} frames at {} Hz ({:.3} s), peak {:.4}",
        zero.frames(),
        zero.sample_rate,
        zero.duration_secs(),
        zero.peak()
    );
}

#[test]
fn decodes_flac_like_libsndfile() {
    let g = golden();
    let clip = read_audio(&fixture("rumpf-beats_06-15.flac")).unwrap();
    check_against_golden(&clip, &g["flac"], true);
    println!(
        "FLAC 24-bit: {} frames, {} Hz, {} channel(s)",
        clip.frames(),
        clip.sample_rate,
        clip.num_channels()
    );
}

#[test]
fn decodes_aiff_like_libsndfile_and_aifc() {
    let g = golden();
    let clip = read_audio(&fixture("bja-pacific-HH_01.aiff")).unwrap();
    check_against_golden(&clip, &g["aiff"], true);
}

#[test]
fn format_comes_from_the_content_not_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let flac_as_wav = dir.path().join("really-flac.wav");
    std::fs::copy(fixture("rumpf-beats_06-15.flac"), &flac_as_wav).unwrap();
    let aiff_as_bin = dir.path().join("really-aiff.bin");
    std::fs::copy(fixture("bja-pacific-HH_01.aiff"), &aiff_as_bin).unwrap();
    assert_eq!(read_audio(&flac_as_wav).unwrap().frames(), 1796);
    assert_eq!(read_audio(&aiff_as_bin).unwrap().frames(), 7483);
    assert_eq!(audio_extensions(), ["wav", "flac", "aif", "aiff"]);
}

fn error_of(path: &Path) -> String {
    let e = read_audio(path).unwrap_err().to_string();
    assert!(
        e.contains(&path.display().to_string()),
        "the error should name {}: {e}",
        path.display()
    );
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

#[test]
fn bad_files_give_one_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::read(speech_digits_dir().join("3.wav")).unwrap();

    let cut = dir.path().join("cut.wav");
    std::fs::write(&cut, &real[..real.len() / 2]).unwrap();
    let e = error_of(&cut);
    assert!(e.contains("truncated"), "{e}");
    println!("{e}");

    let header_only = dir.path().join("header.wav");
    std::fs::write(&header_only, &real[..30]).unwrap();
    let e = error_of(&header_only);
    assert!(e.contains("truncated"), "{e}");

    let text = dir.path().join("notes.wav");
    std::fs::write(&text, "these are my notes, not audio\n").unwrap();
    let e = error_of(&text);
    assert!(e.contains("not a WAV, FLAC or AIFF file"), "{e}");
    println!("{e}");

    let empty_file = dir.path().join("empty.wav");
    std::fs::write(&empty_file, b"").unwrap();
    assert!(error_of(&empty_file).contains("empty"));

    let zero = dir.path().join("zero.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    hound::WavWriter::create(&zero, spec)
        .unwrap()
        .finalize()
        .unwrap();
    let e = error_of(&zero);
    assert!(e.ends_with("the clip has no samples"), "{e}");

    let missing = dir.path().join("missing.wav");
    let e = error_of(&missing);
    assert!(e.contains("No such file"), "{e}");

    let flac = std::fs::read(fixture("rumpf-beats_06-15.flac")).unwrap();
    for (cut, at) in [("half.flac", flac.len() / 2), ("head.flac", 20)] {
        let path = dir.path().join(cut);
        std::fs::write(&path, &flac[..at]).unwrap();
        let e = error_of(&path);
        assert!(e.contains("truncated"), "{e}");
        println!("{e}");
    }
    let mut damaged = flac.clone();
    for b in damaged.iter_mut().skip(200).step_by(7) {
        *b ^= 0x5a;
    }
    let corrupt = dir.path().join("corrupt.flac");
    std::fs::write(&corrupt, &damaged).unwrap();
    assert!(error_of(&corrupt).contains("corrupt"));

    let aiff = std::fs::read(fixture("bja-pacific-HH_01.aiff")).unwrap();
    let half_aiff = dir.path().join("half.aiff");
    std::fs::write(&half_aiff, &aiff[..aiff.len() / 2]).unwrap();
    assert!(error_of(&half_aiff).contains("truncated"));
    let garbled = dir.path().join("garbled.aiff");
    let mut bad = aiff[..12].to_vec();
    bad.extend(std::iter::repeat_n(0xAB, 200));
    std::fs::write(&garbled, &bad).unwrap();
    println!("{}", error_of(&garbled));
}

/// A minimal WAV header (PCM `format` code 1 or IEEE float 3) followed by `data`.
fn wav_bytes(format: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
    let block = channels * bits / 8;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&format.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * block as u32).to_le_bytes());
    b.extend_from_slice(&block.to_le_bytes());
    b.extend_from_slice(&bits.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(data);
    b
}

#[test]
fn wav_encodings_hound_lacks_go_to_symphonia() {
    let dir = tempfile::tempdir().unwrap();
    // 64-bit float, stereo.
    let values = [0.25f64, -0.5, 1.0, -1.0, 0.125, 0.0];
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let path = dir.path().join("f64.wav");
    std::fs::write(&path, wav_bytes(3, 2, 11025, 64, &data)).unwrap();
    let clip = read_audio(&path).unwrap();
    assert_eq!(
        (clip.sample_rate, clip.num_channels(), clip.frames()),
        (11025, 2, 3)
    );
    assert_eq!(clip.channels[0], [0.25, 1.0, 0.125]);
    assert_eq!(clip.channels[1], [-0.5, -1.0, 0.0]);
    // An encoding neither decoder knows (format code 0x55, MPEG layer 3) is refused by name.
    let path = dir.path().join("mp3-in-wav.wav");
    std::fs::write(&path, wav_bytes(0x55, 1, 8000, 16, &[0; 64])).unwrap();
    let e = error_of(&path);
    assert!(e.contains("unsupported"), "{e}");
    println!("{e}");
}

#[test]
fn writing_is_atomic_and_refuses_empty_clips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.wav");
    let clip = AudioClip::new(16000, vec![vec![0.25; 100]]).unwrap();
    write_wav(&path, &clip, SampleFormat::Int16).unwrap();
    let longer = AudioClip::new(16000, vec![vec![-0.25; 300]]).unwrap();
    write_wav(&path, &longer, SampleFormat::Int24).unwrap();
    assert_eq!(read_audio(&path).unwrap().frames(), 300);
    let empty = AudioClip::new(16000, vec![vec![]]).unwrap();
    let e = write_wav(&path, &empty, SampleFormat::Int16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no samples") && e.contains("out.wav"), "{e}");
    assert_eq!(read_audio(&path).unwrap().frames(), 300, "old file kept");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["out.wav"], "no temporary left behind");
}

/// Decodes every file of the fetched `speech` and `drums` datasets (skipped when they are not
/// fetched): `cargo xtask setup --data speech,drums`, then
/// `cargo test -p diffuse-audio --test it reads_every_fetched_dataset_file -- --ignored`.
#[test]
#[ignore = "needs data/datasets/{speech,drums}"]
fn reads_every_fetched_dataset_file() {
    let root = diffuse_audio::data::AudioDataset::default_datasets_dir();
    for name in ["speech", "drums"] {
        let dir = root.join(name);
        if !dir.is_dir() {
            println!("skipped {name}: not fetched");
            continue;
        }
        let files = diffuse_audio::data::audio_files(&dir).unwrap();
        let mut rates = std::collections::BTreeMap::new();
        for f in &files {
            let clip = read_audio(f).unwrap_or_else(|e| panic!("{e}"));
            *rates
                .entry((clip.sample_rate, clip.num_channels()))
                .or_insert(0) += 1;
        }
        println!(
            "{name}: {} files, (rate, channels) -> count {rates:?}",
            files.len()
        );
    }
}

/// An AIFF-C file of big-endian 32-bit floats (`fl32`), built by hand.
fn aifc_fl32_bytes(channels: u16, rate: u32, interleaved: &[f32]) -> Vec<u8> {
    // The sample rate as an 80-bit IEEE extended float: exponent, then an explicit 64-bit
    // mantissa with its integer bit set.
    let shift = 31 - rate.leading_zeros();
    let mut rate80 = ((16383 + shift) as u16).to_be_bytes().to_vec();
    rate80.extend_from_slice(&((rate as u64) << (63 - shift)).to_be_bytes());
    let mut comm = Vec::new();
    comm.extend_from_slice(&channels.to_be_bytes());
    comm.extend_from_slice(&((interleaved.len() / channels as usize) as u32).to_be_bytes());
    comm.extend_from_slice(&32u16.to_be_bytes());
    comm.extend_from_slice(&rate80);
    comm.extend_from_slice(b"fl32");
    comm.extend_from_slice(&[0, 0]); // an empty Pascal-string name, padded to even length
    let mut ssnd = vec![0u8; 8]; // offset and block size
    for x in interleaved {
        ssnd.extend_from_slice(&x.to_be_bytes());
    }
    let mut body = b"AIFC".to_vec();
    for (id, chunk) in [
        (b"FVER", 0xA280_5140u32.to_be_bytes().to_vec()),
        (b"COMM", comm),
        (b"SSND", ssnd),
    ] {
        body.extend_from_slice(id);
        body.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        body.extend_from_slice(&chunk);
    }
    let mut b = b"FORM".to_vec();
    b.extend_from_slice(&(body.len() as u32).to_be_bytes());
    b.extend_from_slice(&body);
    b
}

#[test]
fn non_finite_samples_are_refused_naming_the_file_and_the_sample() {
    let dir = tempfile::tempdir().unwrap();
    // A stereo float32 WAV (hound's reader) with NaN at frame 3 of the second channel, and an
    // infinity later: the first in time is named, the rest counted.
    let path = dir.path().join("nan.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 8000,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for i in 0..100 {
        let right = match i {
            3 => f32::NAN,
            50 => f32::INFINITY,
            _ => 0.1,
        };
        w.write_sample(0.25f32).unwrap();
        w.write_sample(right).unwrap();
    }
    w.finalize().unwrap();
    let e = error_of(&path);
    assert!(
        e.contains("frame 3 (0.000375 s), channel 2 of 2, is NaN")
            && e.contains("1 more")
            && e.contains("finite"),
        "{e}"
    );
    println!("{e}");
    assert!(diffuse_audio::wav::read_audio_exact(&path).is_err());

    // 64-bit float WAV (symphonia's reader): infinity, and a finite value no f32 can hold.
    for (value, expected) in [
        (f64::NEG_INFINITY, "-infinity"),
        (1e300, "beyond the range of 32-bit floats"),
    ] {
        let values = [0.5f64, 0.25, value, 0.0];
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let path = dir.path().join("f64.wav");
        std::fs::write(&path, wav_bytes(3, 1, 8000, 64, &data)).unwrap();
        let e = error_of(&path);
        assert!(
            e.contains("frame 2") && e.contains("channel 1 of 1") && e.contains(expected),
            "{e}"
        );
    }

    // AIFF-C with 32-bit floats (symphonia's AIFF reader): read when finite, refused with NaN.
    let path = dir.path().join("floats.aifc");
    std::fs::write(&path, aifc_fl32_bytes(1, 8000, &[0.5, -0.25, 0.125, 0.0])).unwrap();
    let clip = read_audio(&path).unwrap();
    assert_eq!(clip.channels[0], [0.5, -0.25, 0.125, 0.0]);
    std::fs::write(
        &path,
        aifc_fl32_bytes(1, 8000, &[0.5, -0.25, f32::NAN, 0.0]),
    )
    .unwrap();
    let e = error_of(&path);
    assert!(e.contains("frame 2") && e.contains("NaN"), "{e}");
}

#[test]
fn exact_reading_and_writing_is_bit_exact_in_every_format() {
    use diffuse_audio::wav::{read_audio_exact, write_wav_exact, StoredFormat};
    let dir = tempfile::tempdir().unwrap();
    // Codes that use every bit, 32-bit ones included (f32 holds only 24 of them).
    let code = |i: u64, bits: u32| -> i64 {
        let span = 1u64 << bits;
        let x = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 7) % span;
        x as i64 - (span / 2) as i64
    };
    for (format, bits, stored) in [
        (SampleFormat::Int8, 8, StoredFormat::Int(8)),
        (SampleFormat::Int16, 16, StoredFormat::Int(16)),
        (SampleFormat::Int24, 24, StoredFormat::Int(24)),
        (SampleFormat::Int32, 32, StoredFormat::Int(32)),
        (SampleFormat::Float32, 32, StoredFormat::Float32),
    ] {
        let path = dir.path().join(format!("{format}.wav"));
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 22050,
            bits_per_sample: bits as u16,
            sample_format: if format == SampleFormat::Float32 {
                hound::SampleFormat::Float
            } else {
                hound::SampleFormat::Int
            },
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for i in 0..1000u64 {
            match format {
                SampleFormat::Float32 => w
                    .write_sample(f32::from_bits(
                        0x3000_0000 + (i as u32).wrapping_mul(0x9E37),
                    ))
                    .unwrap(),
                SampleFormat::Int8 => w.write_sample(code(i, 8) as i8).unwrap(),
                SampleFormat::Int16 => w.write_sample(code(i, 16) as i16).unwrap(),
                _ => w.write_sample(code(i, bits) as i32).unwrap(),
            }
        }
        w.finalize().unwrap();
        let audio = read_audio_exact(&path).unwrap();
        assert_eq!(audio.stored, Some(stored), "{format}");
        assert_eq!(stored.exact_wav_format(), Some(format));
        let copy = dir.path().join(format!("{format}-copy.wav"));
        write_wav_exact(&copy, &audio, format).unwrap();
        assert_eq!(
            std::fs::read(&copy).unwrap(),
            std::fs::read(&path).unwrap(),
            "{format}: not written back bit for bit"
        );
    }
    // FLAC's 24-bit codes arrive in 32-bit buffers; they are still 24-bit, and int24 holds them.
    let flac = read_audio_exact(&fixture("rumpf-beats_06-15.flac")).unwrap();
    assert_eq!(flac.stored, Some(StoredFormat::Int(24)));
    let path = dir.path().join("flac.wav");
    write_wav_exact(&path, &flac, SampleFormat::Int24).unwrap();
    assert_eq!(read_audio_exact(&path).unwrap().channels, flac.channels);
    let aiff = read_audio_exact(&fixture("bja-pacific-HH_01.aiff")).unwrap();
    let format = aiff.stored.and_then(|s| s.exact_wav_format()).unwrap();
    write_wav_exact(&path, &aiff, format).unwrap();
    assert_eq!(read_audio_exact(&path).unwrap().channels, aiff.channels);
    assert_eq!(StoredFormat::Float64.exact_wav_format(), None);
}
