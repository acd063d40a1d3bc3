//! qualmd's building blocks: model cards and tract inference, frame sources and the capture
//! thread, calibration files, the spool and the ledger, the uplink that sends records to a server,
//! metrics and service life. The `qualm` host tools link this library too, so a model is loaded,
//! fed and scored the same way on the laptop and on the camera.

pub mod calibration;
pub mod capture;
pub mod card;
pub mod config;
pub mod decode;
pub mod ledger;
pub mod lock;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod nonfinite;
pub mod perceptual;
pub mod pipeline;
pub mod service;
pub mod source;
pub mod spool;
pub mod staged;
pub mod status;
pub mod summary;
pub mod uplink;
