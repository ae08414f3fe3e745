//! Multi-crop batches and the reusable buffers the workers fill in place.
//!
//! Layout (documented contract with the trainer): u8 RGB, channels last, view-major:
//! `globals` is `[2][B][Hg][Wg][3]` and `locals` is `[N][B][Hl][Wl][3]`, so the two global
//! views of the whole batch are one contiguous `[2B, Hg, Wg, 3]` tensor and the locals one
//! `[N*B, Hl, Wl, 3]` tensor, which is how the student and teacher consume them (one backbone
//! pass per resolution). Normalization to floats is the consumer's job, on its device.

use std::cell::UnsafeCell;
use std::ops::Deref;
use std::sync::Arc;

use crossbeam_channel::Sender;

/// Where a rank stands in the stream: samples of `epoch` it has consumed so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub epoch: u64,
    pub consumed: u64,
}

/// The shape of every batch of a loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchShape {
    pub batch_size: usize,
    pub global_size: u32,
    pub local_size: u32,
    pub local_crops: usize,
}

impl BatchShape {
    pub fn global_view_bytes(&self) -> usize {
        (self.global_size * self.global_size * 3) as usize
    }
    pub fn local_view_bytes(&self) -> usize {
        (self.local_size * self.local_size * 3) as usize
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub shape: BatchShape,
    pub globals: Vec<u8>,
    pub locals: Vec<u8>,
    /// Global sample index of each slot.
    pub indices: Vec<u64>,
    pub labels: Vec<i32>,
    /// Slots whose sample failed to decode and hold a deterministic replacement.
    pub replaced: Vec<bool>,
    pub epoch: u64,
    /// Index of this batch within its epoch (for this rank).
    pub step: u64,
    /// The position after this batch: resume here to continue with the next one.
    pub next: Position,
}

impl Batch {
    pub fn new(shape: BatchShape) -> Self {
        let b = shape.batch_size;
        Self {
            shape,
            globals: vec![0; 2 * b * shape.global_view_bytes()],
            locals: vec![0; shape.local_crops * b * shape.local_view_bytes()],
            indices: vec![0; b],
            labels: vec![0; b],
            replaced: vec![false; b],
            epoch: 0,
            step: 0,
            next: Position::default(),
        }
    }

    /// Global view `view` (0 or 1) of slot `slot`.
    pub fn global(&self, view: usize, slot: usize) -> &[u8] {
        let n = self.shape.global_view_bytes();
        &self.globals[(view * self.shape.batch_size + slot) * n..][..n]
    }

    /// Local view `view` (0..N) of slot `slot`.
    pub fn local(&self, view: usize, slot: usize) -> &[u8] {
        let n = self.shape.local_view_bytes();
        &self.locals[(view * self.shape.batch_size + slot) * n..][..n]
    }
}

/// A batch being filled by several workers at once, each in its own slots.
///
/// The raw pointers are taken once, when the batch is created, so that filling a slot never
/// forms a reference to the whole batch; the vectors are never resized while shared.
pub(crate) struct SharedBatch {
    batch: UnsafeCell<Batch>,
    globals: *mut u8,
    locals: *mut u8,
    indices: *mut u64,
    labels: *mut i32,
    replaced: *mut bool,
}

// SAFETY: access follows the protocol documented on each method: one thread sets the header
// while it holds the only handle, workers write disjoint slots, and the batch is read only
// after every slot's completion message has been received (channels order the writes first).
unsafe impl Send for SharedBatch {}
unsafe impl Sync for SharedBatch {}

/// The parts of one slot a worker writes.
pub(crate) struct SlotMut<'a> {
    batch: &'a SharedBatch,
    slot: usize,
    shape: BatchShape,
    pub index: &'a mut u64,
    pub label: &'a mut i32,
    pub replaced: &'a mut bool,
}

impl SlotMut<'_> {
    fn view(&mut self, base: *mut u8, view: usize, bytes: usize) -> &mut [u8] {
        let offset = (view * self.shape.batch_size + self.slot) * bytes;
        // SAFETY: (view, slot) ranges are disjoint across slots and inside the buffer, which
        // outlives the borrow and is never reallocated; this slot is ours alone (see `slot`).
        unsafe { std::slice::from_raw_parts_mut(base.add(offset), bytes) }
    }

    /// This slot's global view `view` (0 or 1).
    pub fn global(&mut self, view: usize) -> &mut [u8] {
        assert!(view < 2);
        self.view(self.batch.globals, view, self.shape.global_view_bytes())
    }

    /// This slot's local view `view`.
    pub fn local(&mut self, view: usize) -> &mut [u8] {
        assert!(view < self.shape.local_crops);
        self.view(self.batch.locals, view, self.shape.local_view_bytes())
    }
}

impl SharedBatch {
    pub fn new(mut batch: Batch) -> Self {
        Self {
            globals: batch.globals.as_mut_ptr(),
            locals: batch.locals.as_mut_ptr(),
            indices: batch.indices.as_mut_ptr(),
            labels: batch.labels.as_mut_ptr(),
            replaced: batch.replaced.as_mut_ptr(),
            batch: UnsafeCell::new(batch),
        }
    }

    /// Says which batch of the stream this buffer now holds.
    ///
    /// # Safety
    /// The caller holds the only handle to this batch (no worker or consumer has one).
    pub unsafe fn set_header(&self, epoch: u64, step: u64, next: Position) {
        // SAFETY: exclusive by the caller's guarantee.
        let batch = unsafe { &mut *self.batch.get() };
        batch.epoch = epoch;
        batch.step = step;
        batch.next = next;
    }

    /// # Safety
    /// No slot is being written: every worker that was given a slot has reported it done.
    pub unsafe fn get(&self) -> &Batch {
        // SAFETY: no writer is active by the caller's guarantee.
        unsafe { &*self.batch.get() }
    }

    /// # Safety
    /// `slot` is written by this caller alone until it reports the slot done, and no
    /// reference to the whole batch exists meanwhile.
    pub unsafe fn slot(&self, slot: usize, shape: BatchShape) -> SlotMut<'_> {
        assert!(
            slot < shape.batch_size,
            "slot {slot} of {}",
            shape.batch_size
        );
        // SAFETY: element `slot` of each per-slot array is written by this caller alone.
        unsafe {
            SlotMut {
                batch: self,
                slot,
                shape,
                index: &mut *self.indices.add(slot),
                label: &mut *self.labels.add(slot),
                replaced: &mut *self.replaced.add(slot),
            }
        }
    }
}

/// A finished batch lent to the consumer; dropping it returns the buffer to the loader.
pub struct LoanedBatch {
    shared: Option<Arc<SharedBatch>>,
    pool: Sender<Arc<SharedBatch>>,
}

impl LoanedBatch {
    pub(crate) fn new(shared: Arc<SharedBatch>, pool: Sender<Arc<SharedBatch>>) -> Self {
        Self {
            shared: Some(shared),
            pool,
        }
    }
}

impl Deref for LoanedBatch {
    type Target = Batch;
    fn deref(&self) -> &Batch {
        let shared = self.shared.as_ref().expect("present until dropped");
        // SAFETY: a batch is lent only after all its slots were reported done, and no worker
        // gets it again before this loan returns it to the pool.
        unsafe { shared.get() }
    }
}

impl Drop for LoanedBatch {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            // the loader may be gone already; then the buffer is simply freed
            let _ = self.pool.send(shared);
        }
    }
}
