//! The batched send and receive paths (`rtp::io`) allocate nothing per packet: slots, headers
//! and addresses are allocated once, when the batch is made.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};

use mohd::rtp::io::{BATCH, RecvBatch, SendBatch};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged, counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed through.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn sending_and_receiving_batches_allocates_nothing() {
    let receiver = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let to = receiver.local_addr().expect("addr");
    let sender = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    sender.set_nonblocking(true).expect("non-blocking");
    let mut batch: SendBatch = SendBatch::new();
    let mut inbound = RecvBatch::new();
    let round = |batch: &mut SendBatch, inbound: &mut RecvBatch| {
        while let Some(slot) = batch.slot() {
            slot[..12].fill(0x80);
            batch.push(172, to, 1);
        }
        let sent = batch.flush(&sender, |_| {});
        let mut received = 0;
        while received < sent {
            match inbound.recv(&receiver) {
                Ok(n) => received += n,
                Err(e) => panic!("recvmmsg: {e}"),
            }
        }
        received
    };
    round(&mut batch, &mut inbound);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut received = 0;
    for _ in 0..20 {
        received += round(&mut batch, &mut inbound);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(received, 20 * BATCH);
    assert_eq!(allocations, 0, "allocations while sending and receiving");
}
