//! qualmd's building blocks: model cards and tract inference, frame sources, calibration
//! files, the spool and the ledger. The `qualm` host tools link this library too, so a model
//! is loaded, fed and scored the same way on the laptop and on the camera.

pub mod calibration;
pub mod card;
pub mod config;
pub mod ledger;
pub mod model;
pub mod perceptual;
pub mod pipeline;
pub mod source;
pub mod spool;
