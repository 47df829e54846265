//! The TDX SEAMCALL register ABI as a scenario backend (arrives with the platform-tdx issue).
