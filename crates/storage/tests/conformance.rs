//! Every backend the crate ships runs the same conformance cases.

use storage::conformance::run_all;
use storage::{EngineBackend, FileBackend, MemoryBackend};

#[test]
fn engine_backend_conforms() {
    run_all(|| {
        let dir = tempfile::tempdir().unwrap();
        (EngineBackend::open(dir.path(), None).unwrap(), dir)
    });
}

#[test]
fn file_backend_conforms() {
    run_all(|| {
        let dir = tempfile::tempdir().unwrap();
        (FileBackend::open(dir.path()).unwrap(), dir)
    });
}

#[test]
fn memory_backend_conforms() {
    run_all(|| (MemoryBackend::new(None), ()));
}
