//! Asynchronous I/O (`rbd_aio_*`): a request is in flight until waited for; its buffer is
//! owned by the request until librbd completes it, so it cannot be freed or reused early.

use std::ffi::c_char;
use std::ptr;

use crate::ffi::{self, Api};
use crate::{Error, Image, Result, check};

/// One asynchronous request on an image. [`Aio::wait`] returns its result (and, for a read,
/// the data); dropping it without waiting still waits, so the buffer outlives the request.
pub struct Aio<'a> {
    comp: ffi::Completion,
    api: &'static Api,
    buf: Option<Vec<u8>>,
    image: &'a Image,
    what: &'static str,
    done: bool,
}

impl std::fmt::Debug for Aio<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aio({} {})", self.what, self.image.spec())
    }
}

impl<'a> Aio<'a> {
    fn start(
        image: &'a Image,
        what: &'static str,
        buf: Option<Vec<u8>>,
        submit: impl FnOnce(ffi::Completion, Option<&mut Vec<u8>>) -> i32,
    ) -> Result<Aio<'a>> {
        let api = image.api;
        let mut comp = ptr::null_mut();
        // SAFETY: no callback (the request is waited for); `comp` is a valid out-pointer.
        let r = unsafe { (api.rbd_aio_create_completion)(ptr::null_mut(), None, &mut comp) };
        check(r.into(), || "creating an I/O completion".into())?;
        let mut aio = Aio {
            comp,
            api,
            buf,
            image,
            what,
            done: false,
        };
        let r = submit(comp, aio.buf.as_mut());
        if r < 0 {
            aio.done = true; // never submitted: nothing to wait for
            return Err(Error::Call {
                op: format!("{what} {}", image.spec()),
                errno: -r,
            });
        }
        Ok(aio)
    }

    /// Starts reading `len` bytes at `offset`.
    pub fn read(image: &'a Image, offset: u64, len: usize) -> Result<Aio<'a>> {
        Aio::start(image, "reading", Some(vec![0u8; len]), |c, b| {
            let b = b.expect("read buffer");
            // SAFETY: the image is open and outlives this request (the borrow `'a`); the
            // buffer is owned by the request, which is not released, nor the buffer dropped
            // or moved out, before librbd completes it (`wait`, `Drop`). A Vec's heap data
            // does not move when the Vec value does.
            unsafe {
                (image.api.rbd_aio_read2)(
                    image.raw(),
                    offset,
                    b.len(),
                    b.as_mut_ptr() as *mut c_char,
                    c,
                    0,
                )
            }
        })
    }

    /// Starts writing `data` at `offset`.
    pub fn write(image: &'a Image, offset: u64, data: Vec<u8>) -> Result<Aio<'a>> {
        Aio::start(image, "writing", Some(data), |c, b| {
            let b = b.expect("write buffer");
            // SAFETY: as for `read`: the buffer is owned by the request until completion.
            unsafe {
                (image.api.rbd_aio_write2)(
                    image.raw(),
                    offset,
                    b.len(),
                    b.as_ptr() as *const c_char,
                    c,
                    0,
                )
            }
        })
    }

    /// Starts deallocating a range.
    pub fn discard(image: &'a Image, offset: u64, len: u64) -> Result<Aio<'a>> {
        Aio::start(image, "discarding in", None, |c, _| {
            // SAFETY: the image is open and outlives the request.
            unsafe { (image.api.rbd_aio_discard)(image.raw(), offset, len, c) }
        })
    }

    /// Starts a flush of every write completed before it.
    pub fn flush(image: &'a Image) -> Result<Aio<'a>> {
        Aio::start(image, "flushing", None, |c, _| {
            // SAFETY: the image is open and outlives the request.
            unsafe { (image.api.rbd_aio_flush)(image.raw(), c) }
        })
    }

    fn complete(&mut self) -> isize {
        // SAFETY: the completion was submitted and is not yet released.
        unsafe { (self.api.rbd_aio_wait_for_complete)(self.comp) };
        // SAFETY: as above; the request is complete.
        let r = unsafe { (self.api.rbd_aio_get_return_value)(self.comp) };
        self.done = true;
        r
    }

    /// Waits for completion: a read's data (as many bytes as were read), a write's buffer
    /// back, or an empty vector.
    pub fn wait(mut self) -> Result<Vec<u8>> {
        let r = self.complete();
        let mut buf = self.buf.take().unwrap_or_default();
        let n = check(r as i64, || format!("{} {}", self.what, self.image.spec()))? as usize;
        if self.what == "reading" {
            buf.truncate(n);
        }
        Ok(buf)
    }
}

impl Drop for Aio<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.complete();
        }
        // SAFETY: the request is complete (or was never submitted), so librbd no longer
        // touches the buffer or the completion; released once.
        unsafe { (self.api.rbd_aio_release)(self.comp) };
    }
}
