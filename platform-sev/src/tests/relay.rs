//! The relay on SEV-TIO: `SPDM_REQUEST`, the request and response buffers, the reissue.
