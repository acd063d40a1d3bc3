//! Frame sources: a folder of images, or a video decoded by an ffmpeg pipe.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use anyhow::{Context, bail};
use image::RgbImage;

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
        Ok(Self { files: files.into_iter() })
    }
}

impl Iterator for FolderSource {
    type Item = Result<Frame, BadFrame>;

    fn next(&mut self) -> Option<Self::Item> {
        let path = self.files.next()?;
        let id = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let decoded = image::open(&path)
            .with_context(|| format!("cannot decode frame {} as an image", path.display()));
        Some(match decoded {
            Ok(image) => {
                Ok(Frame { id, origin: path.display().to_string(), image: image.to_rgb8() })
            }
            Err(error) => Err(BadFrame { id, error }),
        })
    }
}

/// A video file decoded by `ffmpeg` into a stream of binary PPM frames on a pipe.
#[derive(Debug)]
pub struct VideoSource {
    child: Child,
    stdout: BufReader<ChildStdout>,
    path: PathBuf,
    stem: String,
    index: u64,
    done: bool,
}

impl VideoSource {
    /// Starts `ffmpeg` on `path`.
    ///
    /// # Errors
    /// When the file does not exist or ffmpeg cannot be started.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if !path.is_file() {
            bail!("expected a video file at {}, found none", path.display());
        }
        let mut child = Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-i"])
            .arg(path)
            .args(["-f", "image2pipe", "-vcodec", "ppm", "-"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start ffmpeg to decode the video (is ffmpeg installed?)")?;
        let stdout = BufReader::new(child.stdout.take().context("ffmpeg gave no stdout")?);
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Self { child, stdout, path: path.to_path_buf(), stem, index: 0, done: false })
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
