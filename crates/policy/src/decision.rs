use std::fmt;

use serde::Serialize;

/// Why a decision came out the way it did. The code (`Display`) is stable: it appears in logs,
/// metrics, the troubleshooter and the docs, and tests assert it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Reason {
    /// A binding on the resource or its project grants the permission to the principal.
    IamGranted,
    /// No binding grants the permission to the principal.
    IamNoBinding,
    /// The permission is not one runnel knows; nobody holds it.
    IamUnknownPermission,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::IamGranted => "iam.granted",
            Reason::IamNoBinding => "iam.no_binding",
            Reason::IamUnknownPermission => "iam.unknown_permission",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A verdict with its reason and the steps that led to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
    /// One line per fact considered, in order, for people.
    pub trace: Vec<String>,
}

impl Decision {
    pub fn allow(reason: Reason, trace: Vec<String>) -> Self {
        Self { allowed: true, reason, trace }
    }

    pub fn deny(reason: Reason, trace: Vec<String>) -> Self {
        Self { allowed: false, reason, trace }
    }
}
