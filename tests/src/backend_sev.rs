//! The SEV-TIO command-buffer ABI as a scenario backend (arrives with the platform-sev issue).
