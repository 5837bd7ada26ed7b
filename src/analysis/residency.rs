//! Why a stretch of memory's residency is not known: said in the answer's
//! `errors` as its `Display` text, where the answer is assembled.

/// Why `mincore` gave no figure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResidencyError {
    /// Left for the measuring thread, which did not measure it.
    NotMeasured,
    /// `mincore` failed; the system's own words.
    Mincore(String),
    /// A page of a walk was unmapped while it was measured.
    PageReleased,
    /// A Lua allocator's segment: released by the VM while it was measured?
    SegmentReleased(Box<ResidencyError>),
}

impl std::fmt::Display for ResidencyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResidencyError::NotMeasured => f.write_str("not measured"),
            ResidencyError::Mincore(os) => write!(f, "mincore: {os}"),
            ResidencyError::PageReleased => {
                f.write_str("mincore: a page was released while measured")
            }
            ResidencyError::SegmentReleased(e) => {
                write!(f, "{e} (segment released while measuring?)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ResidencyError;

    #[test]
    fn residency_errors_read_as_the_answer_says_them() {
        let os = std::io::Error::from_raw_os_error(libc::ENOMEM).to_string();
        let e = ResidencyError::SegmentReleased(Box::new(ResidencyError::Mincore(os)));
        assert_eq!(
            e.to_string(),
            "mincore: Cannot allocate memory (os error 12) (segment released while measuring?)"
        );
        assert_eq!(ResidencyError::NotMeasured.to_string(), "not measured");
    }
}
