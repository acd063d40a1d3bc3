//! `qualm export --format cvat` on a hand-built spool.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use image::{GrayImage, Luma, RgbImage};

fn qualm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qualm")).args(args).output().unwrap()
}

/// A record folder: a 4x2 frame and a mask whose column x holds class x % 3.
fn record(spool: &Path, key: &str, classes: &[&str]) {
    let folder = spool.join(key);
    fs::create_dir_all(&folder).unwrap();
    RgbImage::from_pixel(4, 2, image::Rgb([10, 200, 30])).save(folder.join("frame.jpg")).unwrap();
    GrayImage::from_fn(4, 2, |x, _| Luma([(x % 3) as u8])).save(folder.join("mask.png")).unwrap();
    let meta = serde_json::json!({ "frame": key, "classes": classes, "stats": {} });
    fs::write(folder.join("meta.json"), meta.to_string()).unwrap();
    fs::write(folder.join("uncertainty.png"), b"not read").unwrap();
}

#[test]
fn cvat_layout_with_colour_coded_masks() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let classes = ["background", "person", "car"];
    record(&spool, "b-0002", &classes);
    record(&spool, "a-0001", &classes);
    // A record still being written is no record.
    fs::create_dir_all(spool.join(".partial-c-0003")).unwrap();

    let out = dir.path().join("cvat");
    let output = qualm(&[
        "export",
        "--spool",
        spool.to_str().unwrap(),
        "--format",
        "cvat",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let labelmap = fs::read_to_string(out.join("labelmap.txt")).unwrap();
    assert_eq!(
        labelmap,
        "# label:color_rgb:parts:actions\nbackground:0,0,0::\nperson:128,0,0::\ncar:0,128,0::\n"
    );
    let list = fs::read_to_string(out.join("ImageSets/Segmentation/default.txt")).unwrap();
    assert_eq!(list, "a-0001\nb-0002\n");
    let copied = fs::read(out.join("JPEGImages/a-0001.jpg")).unwrap();
    assert_eq!(copied, fs::read(spool.join("a-0001/frame.jpg")).unwrap());

    let mask = image::open(out.join("SegmentationClass/b-0002.png")).unwrap().to_rgb8();
    assert_eq!(mask.dimensions(), (4, 2));
    let colours: Vec<[u8; 3]> = (0..4).map(|x| mask.get_pixel(x, 1).0).collect();
    assert_eq!(colours, [[0, 0, 0], [128, 0, 0], [0, 128, 0], [0, 0, 0]]);

    // Writing again into the same folder is refused: nothing is overwritten.
    let again =
        qualm(&["export", "--spool", spool.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && stderr.contains("expected an empty"), "{stderr}");
}

#[test]
fn mask_value_beyond_the_classes_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    // Two classes only: the mask's class 2 in column 2 is not one of them.
    record(&spool, "a-0001", &["background", "person"]);
    let out = dir.path().join("cvat");
    let output =
        qualm(&["export", "--spool", spool.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("a-0001/mask.png") && stderr.contains("found 2 at x 2, y 0"),
        "{stderr}"
    );

    // The failed export left nothing behind: no output folder, no staging folder beside it,
    // so once the record is right the same command works.
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["spool"]);
    record(&spool, "a-0001", &["background", "person", "car"]);
    let output =
        qualm(&["export", "--spool", spool.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(out.join("JPEGImages/a-0001.jpg").is_file());
}

#[test]
fn label_studio_tasks_with_brush_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    record(&spool, "a-0001", &["background", "person", "car"]);
    let meta = serde_json::json!({
        "classes": ["background", "person", "car"],
        "model": "qualm_test",
        "stats": { "mean_max_softmax": 0.75 },
    });
    fs::write(spool.join("a-0001/meta.json"), meta.to_string()).unwrap();

    let out = dir.path().join("ls");
    let output = qualm(&[
        "export",
        "--spool",
        spool.to_str().unwrap(),
        "--format",
        "label-studio",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let tasks: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("tasks.json")).unwrap()).unwrap();
    let task = &tasks[0];
    assert_eq!(task["data"]["image"], "/data/local-files/?d=images/a-0001.jpg");
    assert!(out.join("images/a-0001.jpg").is_file());
    let prediction = &task["predictions"][0];
    assert_eq!(
        (prediction["score"].as_f64(), &prediction["model_version"]),
        (Some(0.75), &meta["model"])
    );

    // One region per class present other than the background: person (column 1), car (2).
    let result = prediction["result"].as_array().unwrap();
    let labels: Vec<&str> =
        result.iter().map(|r| r["value"]["brushlabels"][0].as_str().unwrap()).collect();
    assert_eq!(labels, ["person", "car"]);
    assert_eq!(
        (result[0]["original_width"].as_u64(), result[0]["original_height"].as_u64()),
        (Some(4), Some(2))
    );
    // The RLE states 4 x 2 pixels x 4 RGBA bytes = 32 words in its first 32 bits.
    let rle: Vec<u8> = result[0]["value"]["rle"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(&rle[..4], &32u32.to_be_bytes());

    let config = fs::read_to_string(out.join("label_config.xml")).unwrap();
    assert!(config.contains(r##"<Label value="person" background="#800000"/>"##), "{config}");
    assert!(config.contains(r#"<BrushLabels name="label" toName="image">"#), "{config}");
}
