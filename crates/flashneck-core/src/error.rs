//! The one error type. Every message names the argument, what was expected and what was given.

/// Result alias used throughout flashneck.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every way an op can refuse or fail. Validation errors are returned before any launch.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A buffer or tensor does not have the length or shape the parameters imply.
    #[error("shape mismatch for `{arg}`: expected {expected}, got {got}")]
    ShapeMismatch {
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// A parameter is out of its valid range (or a layout is malformed).
    #[error("bad parameter `{arg}`: expected {expected}, got {got}")]
    BadParameter {
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// This backend does not implement the op for this dtype or head dim (yet).
    #[error("unsupported on {backend}: {what}")]
    Unsupported { backend: String, what: String },
    /// The device, driver or runtime failed (allocation, launch, compilation, lost device).
    #[error("device error on {backend}: {message}")]
    Device { backend: String, message: String },
}

impl Error {
    /// A [`Error::BadParameter`] from anything printable.
    pub fn bad(arg: &'static str, expected: impl Into<String>, got: impl ToString) -> Error {
        Error::BadParameter {
            arg,
            expected: expected.into(),
            got: got.to_string(),
        }
    }

    /// A [`Error::ShapeMismatch`] from anything printable.
    pub fn shape(arg: &'static str, expected: impl ToString, got: impl ToString) -> Error {
        Error::ShapeMismatch {
            arg,
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }

    /// An [`Error::Unsupported`].
    pub fn unsupported(backend: impl Into<String>, what: impl Into<String>) -> Error {
        Error::Unsupported {
            backend: backend.into(),
            what: what.into(),
        }
    }

    /// An [`Error::Device`].
    pub fn device(backend: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Device {
            backend: backend.into(),
            message: message.into(),
        }
    }

    /// True for [`Error::Unsupported`].
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Error::Unsupported { .. })
    }
}

/// Check that buffer `arg` holds exactly `expected` elements.
pub fn check_len(arg: &'static str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::shape(
            arg,
            format!("{expected} elements"),
            format!("{got} elements"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_argument_expected_and_given() {
        let e = check_len("q", 3, 4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "shape mismatch for `q`: expected 4 elements, got 3 elements"
        );
        let e = Error::bad("tau", "a finite value > 0", -1.0);
        assert_eq!(
            e.to_string(),
            "bad parameter `tau`: expected a finite value > 0, got -1"
        );
    }
}
