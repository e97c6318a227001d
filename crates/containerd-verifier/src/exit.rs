//! Exit codes shared by every command and by the containerd entry point.

/// Verified / admitted / command succeeded.
pub const ADMITTED: u8 = 0;
/// Rejected by the proof or the policy (or the input is invalid).
pub const REJECTED: u8 = 1;
/// Could not decide: usage error, unreadable input, bad configuration, internal error.
pub const UNDECIDED: u8 = 2;
