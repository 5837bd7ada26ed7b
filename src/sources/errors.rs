//! Why a source gave no figure: kept typed from where it is read to where the
//! answer is assembled, and said there once, in the answer's `errors`, as its
//! `Display` text.

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

/// Why a sample of the process (its mappings, glibc's allocator, stacks,
/// another allocator, the program's data) or of its cgroup was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SampleError {
    /// Reading the source's own file failed; the system's words (the source's
    /// name already says which file).
    Os(String),
    /// Reading a file the source needs failed: which one, and the system's words.
    File { file: &'static str, os: String },
    /// Residency of a range the sample needs.
    Residency(ResidencyError),
    /// No `gnu_get_libc_version`: another C library, so no `mallinfo2`.
    NotGlibc,
    /// glibc without `mallinfo2` (before 2.33).
    GlibcWithoutMallinfo2,
    /// jemalloc refused to refresh its statistics.
    JemallocEpoch,
    /// jemalloc built with `--disable-stats`.
    JemallocWithoutStats,
    /// tcmalloc does not answer the property every figure needs.
    TcmallocWithoutAllocatedBytes,
}

impl SampleError {
    /// The system's words for `e`, for the source's own file.
    pub fn os(e: &std::io::Error) -> SampleError {
        SampleError::Os(e.to_string())
    }

    /// The system's words for `e`, reading `file`.
    pub fn file(file: &'static str, e: &std::io::Error) -> SampleError {
        SampleError::File {
            file,
            os: e.to_string(),
        }
    }
}

impl From<ResidencyError> for SampleError {
    fn from(e: ResidencyError) -> SampleError {
        SampleError::Residency(e)
    }
}

impl std::fmt::Display for SampleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SampleError::Os(os) => f.write_str(os),
            SampleError::File { file, os } => write!(f, "{file}: {os}"),
            SampleError::Residency(e) => write!(f, "{e}"),
            SampleError::NotGlibc => {
                f.write_str("the C library is not glibc (musl?): no mallinfo2")
            }
            SampleError::GlibcWithoutMallinfo2 => {
                f.write_str("glibc older than 2.33: no mallinfo2")
            }
            SampleError::JemallocEpoch => f.write_str("jemalloc: mallctl(\"epoch\") failed"),
            SampleError::JemallocWithoutStats => {
                f.write_str("jemalloc without statistics (built with --disable-stats)")
            }
            SampleError::TcmallocWithoutAllocatedBytes => {
                f.write_str("tcmalloc: generic.current_allocated_bytes not available")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ResidencyError, SampleError};

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

    #[test]
    fn sample_errors_read_as_the_answer_says_them() {
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(
            SampleError::os(&denied).to_string(),
            "Permission denied (os error 13)"
        );
        assert_eq!(
            SampleError::file("pagemap", &denied).to_string(),
            "pagemap: Permission denied (os error 13)"
        );
        assert_eq!(
            SampleError::from(ResidencyError::PageReleased).to_string(),
            "mincore: a page was released while measured"
        );
        assert_eq!(
            SampleError::NotGlibc.to_string(),
            "the C library is not glibc (musl?): no mallinfo2"
        );
        assert_eq!(
            SampleError::GlibcWithoutMallinfo2.to_string(),
            "glibc older than 2.33: no mallinfo2"
        );
        assert_eq!(
            SampleError::JemallocEpoch.to_string(),
            "jemalloc: mallctl(\"epoch\") failed"
        );
        assert_eq!(
            SampleError::JemallocWithoutStats.to_string(),
            "jemalloc without statistics (built with --disable-stats)"
        );
        assert_eq!(
            SampleError::TcmallocWithoutAllocatedBytes.to_string(),
            "tcmalloc: generic.current_allocated_bytes not available"
        );
    }
}
