//! `qualm report` on real frames of the 9-class evaluation model: the page's embedded numbers
//! equal `qualm evaluate --json`'s, the charts decode, and headless Chromium opens the page
//! from disk and decodes every image in it.
//!
//! Chromium comes from Debian's `chromium` package (`.ci/run` installs it); `QUALM_CHROMIUM`
//! may point at another binary. Without one the test fails and says so.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn multiclass() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/multiclass")
}

/// Copies the first `count` frames of a committed set (images, and labels when it has them).
fn subset(set: &str, count: usize, to: &Path) {
    for folder in ["images", "labels"] {
        let from = multiclass().join("data").join(set).join(folder);
        if !from.is_dir() {
            continue;
        }
        fs::create_dir_all(to.join(folder)).unwrap();
        let mut names: Vec<_> =
            fs::read_dir(&from).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for name in names.into_iter().take(count) {
            fs::copy(from.join(&name), to.join(folder).join(&name)).unwrap();
        }
    }
}

fn qualm(args: &[&str]) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_qualm")).args(args).output().unwrap();
    assert!(output.status.success(), "qualm {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

/// The JSON embedded in the page's `<script id="qualm-data">`.
fn embedded_data(html: &str) -> Value {
    let start =
        html.find("id=\"qualm-data\">").expect("embedded data") + "id=\"qualm-data\">".len();
    let end = start + html[start..].find("</script>").unwrap();
    serde_json::from_str(&html[start..end].replace("<\\/", "</")).unwrap()
}

fn chromium() -> String {
    std::env::var("QUALM_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

#[test]
fn report_numbers_match_evaluate_and_the_page_renders_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let (data, ood) = (dir.path().join("test"), dir.path().join("ood_objects"));
    subset("test", 24, &data);
    subset("ood_objects", 8, &ood);
    let card = multiclass().join("multiclass_int8.toml");
    let (card, data, ood) = (card.to_str().unwrap(), data.to_str().unwrap(), ood.to_str().unwrap());
    let out = dir.path().join("page.html");
    let common = ["--model", card, "--data", data, "--ood", ood, "--temperature", "1.25"];

    let mut args = vec!["report"];
    args.extend(common);
    args.extend(["--failed-iou", "0.3", "--panels", "2", "--out", out.to_str().unwrap()]);
    qualm(&args);
    let mut args = vec!["evaluate"];
    args.extend(common);
    args.extend(["--failed-iou", "0.3", "--json"]);
    let evaluate: Value = serde_json::from_slice(&qualm(&args).stdout).unwrap();

    // Same code, same frames: the page's numbers are exactly evaluate's.
    let html = fs::read_to_string(&out).unwrap();
    let page = embedded_data(&html);
    for key in ["scores", "frame_statistics", "failed_frames", "accuracy", "ece", "best"] {
        assert_eq!(page["evaluation"][key], evaluate[key], "{key}");
    }
    let auroc = evaluate["scores"]["margin"]["pixel"]["auroc"].as_f64().unwrap();
    assert!(html.contains(&format!("{auroc:.4}")), "the margin AUROC is in the table");
    for section in ["Calibration", "Wrong pixels", "Most uncertain frames", "Verdict"] {
        assert!(html.contains(&format!("<h2>{section}")), "{section} section");
    }
    assert!(html.contains("ood_objects"), "the OOD set is named");

    // Every chart as SVG and PNG, with its axis labels.
    let files = dir.path().join("page_files");
    for chart in ["reliability", "roc", "risk_coverage", "histogram_entropy"] {
        let svg = fs::read_to_string(files.join(format!("{chart}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<text"), "{chart}.svg");
        let png = image::open(files.join(format!("{chart}.png"))).unwrap();
        assert_eq!((png.width(), png.height()), (560, 400), "{chart}.png");
    }
    assert!(fs::read_to_string(files.join("roc.svg")).unwrap().contains("false positive rate"));

    // The page opens from disk, with no server, and every image in it decodes.
    let images = html.matches("<img ").count();
    assert!(images >= 12, "{images} panel images");
    let profile = dir.path().join("chromium-profile");
    let browser = chromium();
    let dom = Command::new(&browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=10000", "--dump-dom"])
        .arg(format!("file://{}", out.display()))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {browser} ({e}): install Debian's chromium package, as .ci/run does, or set QUALM_CHROMIUM"));
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains(&format!("data-images=\"{images}/{images}\"")),
        "chromium decoded all {images} images: {}",
        &dom[..dom.len().min(300)]
    );
    assert!(dom.contains("<svg"), "inline charts survive parsing");
}
