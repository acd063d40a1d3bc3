//! Frame sources: a folder of images, or a video decoded by an ffmpeg pipe: a file, a network
//! stream (RTSP, HTTP) named by URL, or (feature `v4l2`) a V4L2 camera device.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use anyhow::{Context, bail};
use image::RgbImage;

use crate::decode::{DecodeLimits, decode_frame};

/// One decoded frame.
#[derive(Debug)]
pub struct Frame {
    /// Stable name of the frame: the file stem, or `<video stem>_<index>`.
    pub id: String,
    /// Where it came from (file path, or video path with frame index).
    pub origin: String,
    /// The pixels.
    pub image: RgbImage,
}

/// A frame that could not be read; the source goes on after it.
#[derive(Debug)]
pub struct BadFrame {
    /// Name of the frame.
    pub id: String,
    /// The reason, naming the file.
    pub error: anyhow::Error,
}

/// Yields frames in order; a frame that fails to decode is an `Err` and the next call goes on.
pub trait FrameSource: Iterator<Item = Result<Frame, BadFrame>> {}

impl<T: Iterator<Item = Result<Frame, BadFrame>>> FrameSource for T {}

/// Every `.jpg`, `.jpeg` and `.png` file of a folder, sorted by name.
#[derive(Debug)]
pub struct FolderSource {
    files: std::vec::IntoIter<PathBuf>,
    limits: DecodeLimits,
}

impl FolderSource {
    /// Lists the folder's images.
    ///
    /// # Errors
    /// When the folder cannot be read or holds no image.
    pub fn open(folder: &Path) -> anyhow::Result<Self> {
        let entries = fs::read_dir(folder)
            .with_context(|| format!("cannot read frame folder {}", folder.display()))?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.with_context(|| format!("cannot list {}", folder.display()))?.path();
            let extension = path.extension().and_then(|e| e.to_str()).map(str::to_lowercase);
            if matches!(extension.as_deref(), Some("jpg" | "jpeg" | "png")) {
                files.push(path);
            }
        }
        if files.is_empty() {
            bail!("expected .jpg, .jpeg or .png files in {}, found none", folder.display());
        }
        files.sort();
        Ok(Self { files: files.into_iter(), limits: DecodeLimits::default() })
    }

    /// Decodes frames within `limits` instead of the default ones.
    pub fn with_limits(self, limits: DecodeLimits) -> Self {
        Self { limits, ..self }
    }
}

impl Iterator for FolderSource {
    type Item = Result<Frame, BadFrame>;

    fn next(&mut self) -> Option<Self::Item> {
        let path = self.files.next()?;
        let id = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Some(match decode_frame(&path, self.limits) {
            Ok(image) => Ok(Frame { id, origin: path.display().to_string(), image }),
            Err(error) => Err(BadFrame { id, error }),
        })
    }
}

/// Whether a video source names a network stream (`rtsp://...`, `http://...`) rather than a
/// file: streams are live, may stall, and are reopened when they end.
pub fn is_stream_url(video: &Path) -> bool {
    video.to_str().is_some_and(|v| v.contains("://"))
}

/// Whether a video source names a V4L2 camera device (`/dev/video*`).
pub fn is_camera_device(video: &Path) -> bool {
    video.starts_with("/dev")
        && video.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b"video"))
}

/// ffmpeg's input options for `video`: socket timeouts for network streams (so a stalled
/// stream ends the pipe and is reopened instead of hanging), the `v4l2` demuxer for cameras.
///
/// # Errors
/// When `video` is a camera device and qualmd was built without the `v4l2` feature.
pub fn ffmpeg_input_args(video: &Path) -> anyhow::Result<Vec<String>> {
    let mut args: Vec<String> = Vec::new();
    if is_stream_url(video) {
        // Ten seconds without data count as a stall; the values are microseconds.
        let timeout = if video.to_string_lossy().starts_with("rtsp") {
            args.extend(["-rtsp_transport".into(), "tcp".into()]);
            "-timeout"
        } else {
            "-rw_timeout"
        };
        args.extend([timeout.into(), "10000000".into()]);
    } else if is_camera_device(video) {
        if !cfg!(feature = "v4l2") {
            bail!(
                "{} is a camera device: build qualmd with the v4l2 feature to read it",
                video.display()
            );
        }
        // The camera's own default format (MJPEG or YUYV on UVC cameras): ffmpeg decodes
        // either to RGB, and forcing one would fail on cameras without it.
        args.extend(["-f".into(), "v4l2".into()]);
    }
    Ok(args)
}

/// A video decoded by `ffmpeg` into a stream of binary PPM frames on a pipe.
#[derive(Debug)]
pub struct VideoSource {
    child: Child,
    stdout: BufReader<ChildStdout>,
    path: PathBuf,
    stem: String,
    index: u64,
    done: bool,
    limits: DecodeLimits,
}

impl VideoSource {
    /// Starts `ffmpeg` on `path`: a video file, a stream URL or a camera device (see
    /// [`ffmpeg_input_args`]).
    ///
    /// # Errors
    /// When the file does not exist or ffmpeg cannot be started.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let input_args = ffmpeg_input_args(path)?;
        Self::open_with(path, &input_args)
    }

    /// Starts `ffmpeg` on `path` with extra input options (placed before `-i`), for inputs
    /// that need them, such as raw video of a stated pixel format and size.
    ///
    /// # Errors
    /// When a local file does not exist or ffmpeg cannot be started.
    pub fn open_with(path: &Path, input_args: &[String]) -> anyhow::Result<Self> {
        if !is_stream_url(path) && !is_camera_device(path) && !path.is_file() {
            bail!("expected a video file at {}, found none", path.display());
        }
        let mut child = Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error"])
            .args(input_args)
            .arg("-i")
            .arg(path)
            .args(["-f", "image2pipe", "-vcodec", "ppm", "-"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start ffmpeg to decode the video (is ffmpeg installed?)")?;
        let stdout = BufReader::new(child.stdout.take().context("ffmpeg gave no stdout")?);
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let limits = DecodeLimits::default();
        Ok(Self { child, stdout, path: path.to_path_buf(), stem, index: 0, done: false, limits })
    }

    /// Refuses frames larger than `limits` instead of the default ones (checked on each
    /// frame's header, before its pixels are allocated).
    pub fn with_limits(mut self, limits: DecodeLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Reads one whitespace-separated PPM header token, skipping `#` comments.
    fn token(&mut self) -> std::io::Result<Option<String>> {
        let mut token = String::new();
        loop {
            let buffer = self.stdout.fill_buf()?;
            let Some(&byte) = buffer.first() else {
                return Ok((!token.is_empty()).then_some(token));
            };
            self.stdout.consume(1);
            match byte {
                b'#' => {
                    let mut comment = Vec::new();
                    self.stdout.read_until(b'\n', &mut comment)?;
                }
                b' ' | b'\t' | b'\n' | b'\r' if token.is_empty() => {}
                b' ' | b'\t' | b'\n' | b'\r' => return Ok(Some(token)),
                other => token.push(char::from(other)),
            }
        }
    }

    fn read_frame(&mut self) -> anyhow::Result<Option<RgbImage>> {
        let Some(magic) = self.token()? else { return Ok(None) };
        if magic != "P6" {
            bail!("expected a P6 frame header from ffmpeg, found {magic:?}");
        }

        let mut numbers = [0u32; 3];
        for number in &mut numbers {
            let token = self.token()?.context("truncated PPM header from ffmpeg")?;
            *number = token.parse().with_context(|| format!("bad PPM header value {token:?}"))?;
        }
        let [width, height, max] = numbers;
        if max != 255 {
            bail!("expected 8-bit PPM frames from ffmpeg, found maximum value {max}");
        }
        // The header's size decides the allocation: check it before trusting it.
        let bytes = u64::from(width) * u64::from(height) * 3;
        let limits = self.limits;
        if width > limits.max_width || height > limits.max_height || bytes > limits.max_alloc_bytes
        {
            bail!(
                "expected a frame within {}x{} pixels and {} bytes, found {width}x{height} \
                 ({bytes} bytes)",
                limits.max_width,
                limits.max_height,
                limits.max_alloc_bytes
            );
        }

        let mut pixels = vec![0u8; width as usize * height as usize * 3];
        self.stdout.read_exact(&mut pixels).context("truncated frame from ffmpeg")?;
        let image = RgbImage::from_raw(width, height, pixels).context("frame size mismatch")?;
        Ok(Some(image))
    }
}

impl Iterator for VideoSource {
    type Item = Result<Frame, BadFrame>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let id = format!("{}_{:06}", self.stem, self.index);
        let origin = format!("{}#{}", self.path.display(), self.index);
        self.index += 1;
        match self.read_frame() {
            Ok(Some(image)) => Some(Ok(Frame { id, origin, image })),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(error) => {
                // A broken pipe cannot be resynchronised: report once and end the stream.
                self.done = true;
                let error = error.context(format!("cannot read video {}", self.path.display()));
                Some(Err(BadFrame { id, error }))
            }
        }
    }
}

impl Drop for VideoSource {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BT.601 limited range, the conversion of YUYV camera frames, in f64.
    fn rgb_of(y: u8, u: u8, v: u8) -> [f64; 3] {
        let (y, u, v) = (f64::from(y) - 16.0, f64::from(u) - 128.0, f64::from(v) - 128.0);
        let r = 1.164 * y + 1.596 * v;
        let g = 1.164 * y - 0.392 * u - 0.813 * v;
        let b = 1.164 * y + 2.017 * u;
        [r, g, b].map(|c| c.clamp(0.0, 255.0))
    }

    #[test]
    fn yuyv_frames_arrive_as_the_bt601_colours() {
        // Rows of constant chroma (YUYV shares U and V between two pixels): grey ramp, red,
        // blue, green; 8 x 4 pixels.
        let rows: [([u8; 8], u8, u8); 4] = [
            ([16, 235, 16, 235, 126, 126, 200, 60], 128, 128),
            ([81; 8], 90, 240),
            ([41; 8], 240, 110),
            ([145; 8], 54, 34),
        ];
        let mut raw = Vec::new();
        for (luma, u, v) in &rows {
            for pair in luma.chunks(2) {
                raw.extend_from_slice(&[pair[0], *u, pair[1], *v]);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("camera.yuyv");
        fs::write(&path, &raw).unwrap();

        let args = ["-f", "rawvideo", "-pix_fmt", "yuyv422", "-video_size", "8x4"];
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let mut source = VideoSource::open_with(&path, &args).unwrap();
        let frame = source.next().unwrap().unwrap();
        assert_eq!(frame.image.dimensions(), (8, 4));
        for (row, (luma, u, v)) in rows.iter().enumerate() {
            for (column, &y) in luma.iter().enumerate() {
                let found = frame.image.get_pixel(column as u32, row as u32).0;
                let expected = rgb_of(y, *u, *v);
                for channel in 0..3 {
                    // swscale converts in fixed point: within 3 of the f64 reference.
                    let error = (f64::from(found[channel]) - expected[channel]).abs();
                    assert!(error <= 3.0, "pixel ({column}, {row}): {found:?} vs {expected:?}");
                }
            }
        }
        assert!(source.next().is_none(), "one frame in the file");
    }

    #[test]
    fn video_frames_beyond_the_limits_are_refused_before_allocation() {
        // Two 8 x 4 grey frames: within 8 x 4 they decode, within 7 pixels of width not.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grey.gray");
        fs::write(&path, [128u8; 2 * 8 * 4]).unwrap();
        let args = ["-f", "rawvideo", "-pix_fmt", "gray", "-video_size", "8x4"];
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();

        let fits = DecodeLimits { max_width: 8, max_height: 4, max_alloc_bytes: 96 };
        let mut source = VideoSource::open_with(&path, &args).unwrap().with_limits(fits);
        assert_eq!(source.next().unwrap().unwrap().image.dimensions(), (8, 4));

        let narrow = DecodeLimits { max_width: 7, ..fits };
        let mut source = VideoSource::open_with(&path, &args).unwrap().with_limits(narrow);
        let error = format!("{:#}", source.next().unwrap().unwrap_err().error);
        assert!(error.contains("within 7x4 pixels and 96 bytes, found 8x4 (96 bytes)"), "{error}");
        assert!(error.contains("grey.gray"), "{error}");
        assert!(source.next().is_none(), "the stream ends after a refused frame");

        let small = DecodeLimits { max_alloc_bytes: 95, ..fits };
        let mut source = VideoSource::open_with(&path, &args).unwrap().with_limits(small);
        assert!(source.next().unwrap().is_err());
    }

    #[test]
    fn sources_are_told_apart_by_name() {
        assert!(is_stream_url(Path::new("rtsp://camera.local/stream")));
        assert!(!is_stream_url(Path::new("street.avi")));
        assert!(is_camera_device(Path::new("/dev/video0")));
        assert!(!is_camera_device(Path::new("/dev/null")));
        let rtsp = ffmpeg_input_args(Path::new("rtsp://camera.local/stream")).unwrap();
        assert_eq!(rtsp, ["-rtsp_transport", "tcp", "-timeout", "10000000"]);
        let camera = ffmpeg_input_args(Path::new("/dev/video0"));
        if cfg!(feature = "v4l2") {
            assert_eq!(camera.unwrap(), ["-f", "v4l2"]);
        } else {
            assert!(camera.unwrap_err().to_string().contains("v4l2 feature"));
        }
    }
}
