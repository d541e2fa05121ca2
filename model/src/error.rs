//! One error type for the model crate. Every message names the file, tensor or key at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A checkpoint, config, tokenizer, prompt or input problem; the message names what is wrong.
    #[error("{0}")]
    Invalid(String),
    /// What a request asks is at fault, not the model: a box outside its image, a prompt longer
    /// than the model's positions, placeholders that do not match the images (the server answers
    /// it 400 and an [`Error::Invalid`] 500).
    #[error("{0}")]
    Request(String),
    #[error("image: {0}")]
    Image(#[from] crate::resample::ImageError),
    #[error("tensor op: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// `bail!`-style constructor.
pub fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Invalid(msg.into()))
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
