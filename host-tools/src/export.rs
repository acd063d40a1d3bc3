//! `qualm export`: the records of a qualmd spool as a labeling tool's import format, so that
//! the kept frames arrive with the model's masks as a first draft.
//!
//! CVAT "Segmentation mask 1.1" (Pascal VOC layout): `labelmap.txt`,
//! `ImageSets/Segmentation/default.txt`, `JPEGImages/<key>.jpg` and
//! `SegmentationClass/<key>.png` coloured with the label map's colours.
//!
//! Label Studio: `tasks.json` (one task per record, its prediction scored with the frame's mean
//! max-softmax, one brush region per class present other than class 0), `label_config.xml`
//! and `images/<key>.jpg`. Brush masks are in Label Studio's RLE: the rle-pack bit stream of
//! the mask as RGBA bytes (255 on the class, 0 elsewhere).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::{DynamicImage, Rgb, RgbImage};
use serde::Deserialize;
use serde_json::{Value, json};

/// Import formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// CVAT "Segmentation mask 1.1".
    Cvat,
    /// Label Studio tasks JSON with brush predictions.
    LabelStudio,
}

/// Arguments of `qualm export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Spool folder written by qualmd: one `<key>/` folder per record with frame.jpg, mask.png
    /// (class ids, 8-bit gray) and meta.json; names starting with '.' are incomplete records
    /// and are skipped.
    #[arg(long, value_name = "DIR")]
    spool: PathBuf,

    /// Import format to write.
    #[arg(long, value_enum, default_value = "cvat")]
    format: Format,

    /// Folder to write; it must not exist or be empty, so that nothing is overwritten.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// With label-studio: what precedes `images/<key>.jpg` in each task's image URL (the
    /// default suits Label Studio's local-files storage with its document root at --out).
    #[arg(long, value_name = "URL", default_value = "/data/local-files/?d=")]
    image_prefix: String,
}

/// The part of a record's meta.json the export needs.
#[derive(Debug, Deserialize)]
struct RecordMeta {
    classes: Vec<String>,
    #[serde(default)]
    model: String,
    #[serde(default)]
    stats: Value,
}

/// One complete record of the spool.
#[derive(Debug)]
struct Record {
    key: String,
    folder: PathBuf,
}

/// The colour of class `class` in the Pascal VOC palette: the bits of the class id spread over
/// the high bits of red, green and blue in turn (0 is black, 1 dark red, 2 dark green, ...).
pub fn class_colour(class: u8) -> [u8; 3] {
    let mut colour = [0u8; 3];
    let mut id = class;
    for shift in (0..8).rev() {
        for (channel, value) in colour.iter_mut().enumerate() {
            *value |= ((id >> channel) & 1) << shift;
        }
        id >>= 3;
    }
    colour
}

/// Runs `qualm export`.
///
/// # Errors
/// When the spool cannot be read, a record lacks a file or has a mask value that is not a class
/// id, the records disagree on the classes, or the output folder is not empty.
pub fn run(args: &ExportArgs) -> Result<()> {
    let records = list_records(&args.spool)?;
    if records.is_empty() {
        bail!("{}: expected at least one record folder, found none", args.spool.display());
    }
    let classes = record_classes(&records)?;
    check_out(&args.out)?;

    // Written into a hidden folder beside the output and renamed into place at the end, so a
    // failed export leaves nothing that blocks a retry (the folder is removed on drop).
    let parent = match args.out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent).with_context(|| format!("{}: cannot create", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".qualm-export-")
        .tempdir_in(parent)
        .with_context(|| format!("{}: cannot create a folder in it", parent.display()))?;
    match args.format {
        Format::Cvat => write_cvat(&records, &classes, staging.path())?,
        Format::LabelStudio => write_label_studio(&records, &classes, args, staging.path())?,
    }
    // rename(2) replaces an empty folder, so an empty output folder is fine too.
    fs::rename(staging.path(), &args.out)
        .with_context(|| format!("{}: cannot move the export into place", args.out.display()))?;
    let _ = staging.keep();
    let format = match args.format {
        Format::Cvat => "CVAT Segmentation mask 1.1",
        Format::LabelStudio => "Label Studio tasks",
    };
    println!("wrote {} records to {} as {format}", records.len(), args.out.display());
    Ok(())
}

/// The complete records of a spool, sorted by key.
fn list_records(spool: &Path) -> Result<Vec<Record>> {
    let entries = fs::read_dir(spool)
        .with_context(|| format!("{}: cannot read the spool folder", spool.display()))?;
    let mut records = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("{}: cannot list", spool.display()))?;
        let key = entry.file_name().to_string_lossy().into_owned();
        // Folders still being written (or left by a crash) start with '.'.
        if key.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        records.push(Record { key, folder: entry.path() });
    }
    records.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(records)
}

/// The class names all records share.
fn record_classes(records: &[Record]) -> Result<Vec<String>> {
    let mut classes: Option<(Vec<String>, &Path)> = None;
    for record in records {
        let path = record.folder.join("meta.json");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read the record metadata", path.display()))?;
        let meta: RecordMeta = serde_json::from_str(&text).with_context(|| {
            format!("{}: expected record metadata with a `classes` list", path.display())
        })?;
        match &classes {
            None => classes = Some((meta.classes, &record.folder)),
            Some((first, from)) if *first != meta.classes => bail!(
                "{}: expected the classes {first:?} of {}, found {:?}",
                path.display(),
                from.display(),
                meta.classes
            ),
            Some(_) => {}
        }
    }
    let classes = classes.map(|(c, _)| c).unwrap_or_default();
    if classes.is_empty() || classes.len() > 255 {
        bail!("expected 1 to 255 classes in the records, found {}", classes.len());
    }
    Ok(classes)
}

/// Refuses an output folder that already holds files.
fn check_out(out: &Path) -> Result<()> {
    if out.exists() {
        let mut entries =
            fs::read_dir(out).with_context(|| format!("{}: cannot read", out.display()))?;
        if entries.next().is_some() {
            bail!("{}: expected an empty or new output folder, found files in it", out.display());
        }
    }
    Ok(())
}

/// The CVAT "Segmentation mask 1.1" layout.
fn write_cvat(records: &[Record], classes: &[String], out: &Path) -> Result<()> {
    let sets = out.join("ImageSets/Segmentation");
    let (images, masks) = (out.join("JPEGImages"), out.join("SegmentationClass"));
    for folder in [&sets, &images, &masks] {
        fs::create_dir_all(folder)
            .with_context(|| format!("{}: cannot create", folder.display()))?;
    }

    let mut labelmap = String::from("# label:color_rgb:parts:actions\n");
    for (class, name) in classes.iter().enumerate() {
        let [r, g, b] = class_colour(class as u8);
        labelmap.push_str(&format!("{name}:{r},{g},{b}::\n"));
    }
    write(&out.join("labelmap.txt"), labelmap.as_bytes())?;

    let mut list = String::new();
    for record in records {
        let frame = record.folder.join("frame.jpg");
        let bytes =
            fs::read(&frame).with_context(|| format!("{}: cannot read", frame.display()))?;
        write(&images.join(format!("{}.jpg", record.key)), &bytes)?;

        let coloured = colour_mask(&record.folder.join("mask.png"), classes.len())?;
        let path = masks.join(format!("{}.png", record.key));
        coloured.save(&path).with_context(|| format!("{}: cannot write", path.display()))?;
        list.push_str(&record.key);
        list.push('\n');
    }
    write(&sets.join("default.txt"), list.as_bytes())
}

/// A class-id mask turned into the label map's colours.
fn colour_mask(path: &Path, classes: usize) -> Result<RgbImage> {
    let mask = class_mask(path, classes)?;
    let (width, height) = mask.dimensions();
    let mut coloured = RgbImage::new(width, height);
    for (x, y, pixel) in mask.enumerate_pixels() {
        coloured.put_pixel(x, y, Rgb(class_colour(pixel.0[0])));
    }
    Ok(coloured)
}

/// Label Studio tasks with brush predictions, the labeling config and the images.
fn write_label_studio(
    records: &[Record],
    classes: &[String],
    args: &ExportArgs,
    out: &Path,
) -> Result<()> {
    let images = out.join("images");
    fs::create_dir_all(&images).with_context(|| format!("{}: cannot create", images.display()))?;

    let mut tasks = Vec::with_capacity(records.len());
    for record in records {
        let frame = record.folder.join("frame.jpg");
        let bytes =
            fs::read(&frame).with_context(|| format!("{}: cannot read", frame.display()))?;
        write(&images.join(format!("{}.jpg", record.key)), &bytes)?;

        let meta_path = record.folder.join("meta.json");
        let meta: RecordMeta = serde_json::from_str(&fs::read_to_string(&meta_path)?)
            .with_context(|| format!("{}: expected record metadata", meta_path.display()))?;
        let Some(score) = meta.stats.get("mean_max_softmax").and_then(Value::as_f64) else {
            bail!("{}: expected stats.mean_max_softmax, found none", meta_path.display());
        };

        let mask = class_mask(&record.folder.join("mask.png"), classes.len())?;
        let (width, height) = mask.dimensions();
        let mut result = Vec::new();
        // Class 0 is the background: nothing to draw.
        for (class, name) in classes.iter().enumerate().skip(1) {
            let rgba: Vec<u8> = mask
                .as_raw()
                .iter()
                .flat_map(|&c| [if usize::from(c) == class { 255 } else { 0 }; 4])
                .collect();
            if rgba.iter().all(|&v| v == 0) {
                continue;
            }
            result.push(json!({
                "id": format!("{}-{class}", record.key),
                "type": "brushlabels",
                "from_name": "label",
                "to_name": "image",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": { "format": "rle", "rle": brush_rle(&rgba), "brushlabels": [name] },
            }));
        }
        tasks.push(json!({
            "data": {
                "image": format!("{}images/{}.jpg", args.image_prefix, record.key),
                "record": record.key,
            },
            "predictions": [{ "model_version": meta.model, "score": score, "result": result }],
        }));
    }
    write(&out.join("tasks.json"), serde_json::to_string_pretty(&tasks)?.as_bytes())?;

    let mut config = String::from(
        "<View>\n  <Image name=\"image\" value=\"$image\"/>\n  <BrushLabels name=\"label\" \
         toName=\"image\">\n",
    );
    for (class, name) in classes.iter().enumerate().skip(1) {
        let [r, g, b] = class_colour(class as u8);
        config.push_str(&format!(
            "    <Label value=\"{}\" background=\"#{r:02x}{g:02x}{b:02x}\"/>\n",
            xml_escape(name)
        ));
    }
    config.push_str("  </BrushLabels>\n</View>\n");
    write(&out.join("label_config.xml"), config.as_bytes())
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Run-length sizes of the rle-pack header: a run of `n` words is stored in the smallest of
/// these bit widths that holds `n - 1`.
const RLE_SIZES: [u32; 4] = [3, 4, 8, 16];

/// Writes bits most significant first into bytes.
struct BitWriter {
    bytes: Vec<u8>,
    bits: usize,
}

impl BitWriter {
    fn push(&mut self, value: u32, width: u32) {
        for bit in (0..width).rev() {
            if self.bits.is_multiple_of(8) {
                self.bytes.push(0);
            }
            let set = (value >> bit) & 1;
            let last = self.bytes.len() - 1;
            self.bytes[last] |= (set as u8) << (7 - self.bits % 8);
            self.bits += 1;
        }
    }
}

/// Label Studio's brush RLE of 8-bit words: the rle-pack stream. Header: word count (32 bits),
/// word size - 1 (5 bits), the four run-length sizes - 1 (4 bits each); then runs, each a
/// repeat flag (1), the index of its size (2 bits), its length - 1 in that many bits and the
/// repeated word (8 bits). Only repeat runs are written; a decoder reads them all the same.
///
/// # Panics
/// When `words` has more than `u32::MAX` entries.
pub fn brush_rle(words: &[u8]) -> Vec<u8> {
    let mut out = BitWriter { bytes: Vec::new(), bits: 0 };
    out.push(u32::try_from(words.len()).expect("a mask of at most 2^32 words"), 32);
    out.push(8 - 1, 5);
    for size in RLE_SIZES {
        out.push(size - 1, 4);
    }

    let longest = 1usize << RLE_SIZES[3];
    let mut start = 0;
    while start < words.len() {
        let value = words[start];
        let run = words[start..].iter().take(longest).take_while(|&&w| w == value).count();
        let index = RLE_SIZES.iter().position(|&s| run - 1 < 1 << s).unwrap_or(3);
        out.push(1, 1);
        out.push(index as u32, 2);
        out.push((run - 1) as u32, RLE_SIZES[index]);
        out.push(u32::from(value), 8);
        start += run;
    }
    out.bytes
}

/// A record's mask of class ids, checked against the class count.
fn class_mask(path: &Path, classes: usize) -> Result<image::GrayImage> {
    let image = qualm_daemon::decode::decode_image(path, Default::default())
        .with_context(|| format!("{}: cannot decode the mask PNG", path.display()))?;
    let DynamicImage::ImageLuma8(mask) = image else {
        bail!(
            "{}: expected an 8-bit grayscale mask of class ids, found {:?}",
            path.display(),
            image.color()
        );
    };
    if let Some((x, y, pixel)) = mask.enumerate_pixels().find(|p| usize::from(p.2.0[0]) >= classes)
    {
        bail!(
            "{}: expected class ids 0 to {}, found {} at x {x}, y {y}",
            path.display(),
            classes - 1,
            pixel.0[0]
        );
    }
    Ok(mask)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).with_context(|| format!("{}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoder of the rle-pack stream written from its description (header, then runs of
    /// repeated or literal words), independent of the encoder.
    fn decode(bytes: &[u8]) -> Vec<u8> {
        let mut position = 0usize;
        let mut read = |width: u32| {
            let mut value = 0u32;
            for _ in 0..width {
                let bit = (bytes[position / 8] >> (7 - position % 8)) & 1;
                value = (value << 1) | u32::from(bit);
                position += 1;
            }
            value
        };
        let count = read(32) as usize;
        let word = read(5) + 1;
        let sizes: Vec<u32> = (0..4).map(|_| read(4) + 1).collect();
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let repeat = read(1) == 1;
            let size = sizes[read(2) as usize];
            let length = read(size) as usize + 1;
            if repeat {
                let value = read(word) as u8;
                out.extend(std::iter::repeat_n(value, length));
            } else {
                for _ in 0..length {
                    out.push(read(word) as u8);
                }
            }
        }
        out
    }

    #[test]
    fn brush_rle_round_trips_and_states_its_header() {
        // Runs of 1, 5, 17, 300 and 70,000 words: every run size, and a run split at 2^16.
        let mut words = vec![255u8];
        words.extend([0u8; 5]);
        words.extend([255u8; 17]);
        words.extend([0u8; 300]);
        words.extend(vec![255u8; 70_000]);
        let encoded = brush_rle(&words);
        assert_eq!(decode(&encoded), words);
        // 70,323 words; word size 8 (stored 7); sizes 3, 4, 8, 16 (stored 2, 3, 7, 15): bits
        // 00111 0010 0011 0111 1111 after the count.
        assert_eq!(&encoded[..4], &70_323u32.to_be_bytes());
        assert_eq!(encoded[4..6], [0b0011_1001, 0b0001_1011]);
        assert_eq!(encoded[6] >> 3, 0b1_1111);
        // A run of one word: flag, size index 0, length 0 in 3 bits, value: 14 bits.
        assert_eq!(brush_rle(&[7]).len(), (32 + 5 + 16 + 14usize).div_ceil(8));
    }

    #[test]
    fn palette_is_pascal_voc() {
        // The first entries of the VOC palette, as listed with the VOC 2012 devkit.
        assert_eq!(class_colour(0), [0, 0, 0]);
        assert_eq!(class_colour(1), [128, 0, 0]);
        assert_eq!(class_colour(2), [0, 128, 0]);
        assert_eq!(class_colour(3), [128, 128, 0]);
        assert_eq!(class_colour(4), [0, 0, 128]);
        assert_eq!(class_colour(8), [64, 0, 0]);
        assert_eq!(class_colour(15), [192, 128, 128]);
    }
}
