//! Windows only: the COM glue that exposes the portable provider core to VSS.
//!
//! On other platforms this crate is empty.
