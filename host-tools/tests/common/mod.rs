//! Helpers shared by the CLI tests.

use std::path::Path;

use npyz::WriterBuilder;

/// Writes `data` as a C-order .npy array of `shape` at `path`.
pub fn write_npy<T: npyz::AutoSerialize + Clone>(path: &Path, shape: &[u64], data: &[T]) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .unwrap();
    writer.extend(data.iter().cloned()).unwrap();
    writer.finish().unwrap();
}
