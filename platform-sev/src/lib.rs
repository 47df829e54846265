//! AMD SEV-TIO back end: the firmware speaks AMD's SEV-TIO command-buffer interface, and
//! private MMIO is tracked in the reverse map table (RMP).
//!
//! - [`abi`]: command IDs and command-buffer layouts (zerocopy structs, size-asserted).
//! - [`status`]: SEV status codes and the one mapping from tsm-core statuses.
//! - [`rmp`]: RMP entries for MMIO pages in caller-provided memory, and the core's secure
//!   table on them.
//! - [`sdte`]: the secure device table (one sDTE per TDI's trusted DMA context).
//! - [`fw`]: the dispatcher and the context tables (guest contexts, device and TDI contexts).
//! - [`guest_msg`]: the guest messages TIO_GUEST_REQUEST carries (MMIO_VALIDATE, ...).
//! - [`relay`]: the SPDM request and response buffers of `spdm_ctrl`, as the Linux host reads
//!   and writes them, around the core's relayed DOE objects.
//! - [`memory`]: system memory as the firmware reaches it (command inputs and outputs).
//! - [`host`]: the host's side of the relay (the Linux reissue loop), for tests and the shim.
//! - [`pfn`]: the typed values bitfield entries take (a setter never sees a raw integer).
//!
//! # A TDI's life, through command buffers
//!
//! The host initialises the firmware as Linux does ([`host::tio_init`]), creates a guest
//! context, a device with its BAR list and a TDI, binds it (TDI_BIND, every SPDM round relayed
//! to the model device by [`host::run`], Linux's reissue loop) and maps one page; its
//! TIO_MMIO_UNMAP of that page is refused with the core's `TdiBound`, nothing changed, and
//! TDI_UNBIND then removes the leaf and gives the RMP entry back.
//!
//! ```
//! use platform_sev::abi::{self, Command, SlaAddr};
//! use platform_sev::memory::{PageMemory, SystemMemory};
//! use platform_sev::pfn::Pfn;
//! use platform_sev::tsm_core::device_model::ModelDevice;
//! use platform_sev::tsm_core::{Error, Gpa, Hpa, MmioRange, ModelSession, RequesterId};
//! use platform_sev::tsm_core::ReservedMemory;
//! use platform_sev::zerocopy::{FromZeros, IntoBytes};
//! use platform_sev::{Outcome, Rmp, RmpEntry, RmpStore, Sev, host, rmp_index_words};
//!
//! const BAR: u64 = 0x8000_0000; // one 64 KiB BAR; the RMP covers its 16 pages
//! const MEM: u64 = 0x1_0000_0000; // pages: TIO status, BAR list, SPDM request, SPDM response
//! const GCTX: u64 = 0x2_0000_0000; // the guest context page
//! const GPA: u64 = 0x10_0000_0000;
//! let sla = |addr: u64| SlaAddr::new().with_pfn(Pfn::try_new(addr >> 12).unwrap()).into_bits();
//! let (dev_ctx, tdi_ctx) = (sla(0x3_0000_1000), sla(0x3_0000_2000));
//! let spdm_ctrl = abi::SpdmCtrl { req: sla(MEM + 0x2000).into(), resp: sla(MEM + 0x3000).into(),
//!     ..abi::SpdmCtrl::default() };
//! let rid = RequesterId::try_new(0, 3, 0, 0).unwrap();
//!
//! let memory = RmpStore::new(vec![RmpEntry::new(); 16], vec![0; rmp_index_words(16)]);
//! let rmp = Rmp::new(Hpa::try_new(BAR).unwrap(), memory).unwrap();
//! let system = ReservedMemory::from_ranges(&[MmioRange::from_raw(MEM, 4).unwrap()]).unwrap();
//! let mut sev = Sev::new(rmp, ModelSession::model(), system);
//! let mut mem = PageMemory::<4>::new(MEM);
//! let mut device = ModelDevice::model();
//! device.report_ranges(rid, &[MmioRange::from_raw(BAR, 1).unwrap()]); // one private page
//! let mut bars = abi::BarList::new_zeroed();
//! (bars.count, bars.bars[0].base, bars.bars[0].pages) = (1.into(), BAR.into(), 16.into());
//! mem.write(MEM + 0x1000, bars.as_bytes()).unwrap();
//! host::response_init(&mut mem, MEM + 0x3000).unwrap();
//! host::tio_init(&mut sev, &mut mem, MEM).unwrap();
//!
//! // Issues one command the Linux way, from a buffer at the alignment the firmware requires.
//! #[repr(C, align(8))]
//! struct Buf([u8; 256]);
//! let mut cmd = |sev: &mut Sev<_, _>, c: &dyn Fn(&mut Buf) -> (abi::CommandId, usize)| {
//!     let mut b = Buf([0; 256]);
//!     let (id, n) = c(&mut b);
//!     host::run(sev, &mut mem, &mut device, id, &mut b.0[..n])
//! };
//! fn put<C: Command>(c: C) -> impl Fn(&mut Buf) -> (abi::CommandId, usize) {
//!     move |b| { b.0[..abi::len_of::<C>()].copy_from_slice(c.as_bytes()); (C::ID, abi::len_of::<C>()) }
//! }
//! let len = |n: usize| u32::try_from(n).unwrap().into();
//!
//! assert_eq!(cmd(&mut sev, &put(abi::GctxCreate { gctx_paddr: GCTX.into() })), Outcome::SUCCESS);
//! let activate = abi::Activate { gctx_paddr: GCTX.into(), asid: 5.into() };
//! assert_eq!(cmd(&mut sev, &put(activate)), Outcome::SUCCESS);
//! let mut c = abi::DevCreateBars::new_zeroed();
//! (c.length, c.dev_ctx, c.bar_list) = (len(abi::len_of::<abi::DevCreateBars>()), dev_ctx.into(), (MEM + 0x1000).into());
//! c.device_id = rid.routing_id().into();
//! assert_eq!(cmd(&mut sev, &put(c)), Outcome::SUCCESS);
//! let mut c = abi::DevConnect::new_zeroed();
//! (c.length, c.spdm_ctrl, c.dev_ctx, c.tc_mask) = (len(abi::len_of::<abi::DevConnect>()), spdm_ctrl, dev_ctx.into(), 1);
//! assert_eq!(cmd(&mut sev, &put(c)), Outcome::SUCCESS);
//! let mut c = abi::TdiCreate::new_zeroed();
//! (c.length, c.dev_ctx, c.tdi_ctx) = (len(abi::len_of::<abi::TdiCreate>()), dev_ctx.into(), tdi_ctx.into());
//! c.interface_id.function_id = u32::from(rid.routing_id()).into();
//! assert_eq!(cmd(&mut sev, &put(c)), Outcome::SUCCESS);
//!
//! // Bind: LOCK_INTERFACE and the interface report, relayed round by round.
//! let mut c = abi::TdiBind::new_zeroed();
//! (c.length, c.spdm_ctrl, c.dev_ctx, c.tdi_ctx) = (len(abi::len_of::<abi::TdiBind>()), spdm_ctrl, dev_ctx.into(), tdi_ctx.into());
//! (c.gctx_paddr, c.guest_device_id, c.lock_flags) = (GCTX.into(), 0x100.into(), 1.into());
//! assert_eq!(cmd(&mut sev, &put(c)), Outcome::SUCCESS);
//! let mut c = abi::MmioMap::new_zeroed();
//! (c.length, c.tdi_ctx, c.gctx_paddr) = (len(abi::len_of::<abi::MmioMap>()), tdi_ctx.into(), GCTX.into());
//! (c.gpa, c.hpa, c.page_size) = (GPA.into(), BAR.into(), abi::MMIO_SIZE_4K);
//! assert_eq!(cmd(&mut sev, &put(c)), Outcome::SUCCESS);
//! let guest = sev.guest_ctx(GCTX).unwrap().guest;
//! let gpa = Gpa::try_new(GPA).unwrap();
//! assert!(sev.tsm().leaf(guest, gpa).unwrap().is_some());
//!
//! // The host's unmap of the bound page: the core's TdiBound, and nothing changed.
//! let mut c = abi::MmioUnmap::new_zeroed();
//! (c.length, c.gctx_paddr, c.gpa) = (len(abi::len_of::<abi::MmioUnmap>()), GCTX.into(), GPA.into());
//! c.page_size = abi::MMIO_SIZE_4K;
//! let before = sev.tsm().snapshot().unwrap();
//! assert_eq!(cmd(&mut sev, &put(c)), Outcome::from_core(Err(Error::TdiBound)));
//! assert_eq!(sev.tsm().snapshot().unwrap(), before);
//!
//! // Unbind: every leaf blocked, STOP_INTERFACE relayed, fenced, removed, the RMP entry free.
//! let mut c = abi::TdiUnbind::new_zeroed();
//! (c.length, c.spdm_ctrl, c.dev_ctx, c.tdi_ctx) = (len(abi::len_of::<abi::TdiUnbind>()), spdm_ctrl, dev_ctx.into(), tdi_ctx.into());
//! c.gctx_paddr = GCTX.into();
//! assert_eq!(cmd(&mut sev, &put(c)), Outcome::SUCCESS);
//! assert_eq!(sev.tsm().leaf(guest, gpa).unwrap(), None);
//! assert!(sev.tsm().with_table(|r| r.entries().iter().all(|e| !e.assigned())).unwrap());
//! ```
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod abi;
pub mod fw;
pub mod guest_msg;
pub mod host;
pub mod memory;
pub mod pfn;
pub mod relay;
pub mod rmp;
pub mod sdte;
pub mod status;

pub use fw::Sev;
pub use rmp::{Rmp, RmpEntry, RmpMemory, RmpStore, rmp_index_words};
pub use status::{Outcome, SevStatus};
pub use tsm_core;
/// The byte-layout crate the buffers derive from, for hosts that build buffers.
pub use zerocopy;

#[cfg(test)]
mod tests;
