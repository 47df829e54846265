/*
 * A device link supplied from C: the firmware is initialized with tsm_tdx_init_session and a
 * struct tsm_tdx_session implemented here, which counts its calls and delegates to the model
 * session's callbacks (tsm_tdx_model_session, feature `model-device`), the session the model
 * device opens and seals with. The model device only answers requests sealed with the model's
 * keys and the firmware only accepts answers opened with them, so a bind that completes went
 * through these callbacks.
 *
 *   session delegate        init refusals (NULL ops, each NULL function), the struct changed
 *                           after init (not seen: it was copied), then the whole flow: TD,
 *                           SPDM id, BAR list refusals, link, TDI, bind relayed, map, zap
 *                           refused, unbind relayed, zap allowed; every callback was called
 *   session open-fails      open() always fails: the bind's relayed answer is refused with
 *                           TDX_DEVIF_TDISP_INVALID_MESSAGE + RDX, the TDI's state unchanged
 *                           and its request still waiting (re-read byte for byte)
 *   session open-overlong   open() claims one byte more than its buffer: the same refusal
 *   session record-len-past record_len() runs past the bytes it was given: the same refusal
 *   session secret-drifts   lock_secret() answers differently every time it is asked again;
 *                           the host re-reads the LOCK and reports no answer once before
 *                           relaying it: the bind completes, lock_secret was asked exactly
 *                           once, and the TDI owns exactly the 8 pages the device reported
 *                           (the BAR's first 8: its 9th page is free, its 1st and 8th owned)
 *   session seal-fails-after-lock  seal() fails for the request after the LOCK (the device
 *                           locked the interface): that TDH_DEVIF_RESPONSE answers
 *                           TSM_RELAY_BUFFER_TOO_SMALL + TRANSPORT, the TDI is unbound with
 *                           no request outstanding; once seal works the next bind starts with
 *                           STOP_INTERFACE and completes
 *   session seal-overlong   seal() is given exactly TSM_TDX_SESSION_MAX_OVERHEAD bytes past
 *                           the message; a record one byte longer than that room is
 *                           TSM_RELAY_BUFFER_TOO_SMALL + TRANSPORT with nothing changed and no
 *                           request written; a record filling it is relayed
 *
 * One line per step; exits 0 when every status is the expected one.
 */
#include <stddef.h>
#include <stdlib.h>

#include "host.h"

/* The struct layout the library reads (a pointer and five function pointers). */
_Static_assert(sizeof(struct tsm_tdx_session) == 6 * sizeof(void *), "session layout");
_Static_assert(offsetof(struct tsm_tdx_session, report_digest) == 5 * sizeof(void *),
	       "session layout");
_Static_assert(sizeof(struct tsm_tdx_record_ctx) == 16, "record context layout");
_Static_assert(offsetof(struct tsm_tdx_record_ctx, seq) == 8, "record context layout");


enum { SEAL, OPEN, RECORD_LEN, LOCK_SECRET, REPORT_DIGEST, CALLS };
static const char *const call_names[CALLS] = { "seal", "open", "record_len", "lock_secret",
					       "report_digest" };

enum mode {
	DELEGATE,
	OPEN_FAILS,
	OPEN_OVERLONG,
	RECORD_LEN_PAST,
	SECRET_DRIFTS,
	SEAL_FAILS_AFTER_LOCK,
	SEAL_OVERLONG,
};

/* The C session's own state, its `ctx`. */
struct counting {
	struct tsm_tdx_session model; /* the model's callbacks */
	unsigned long calls[CALLS];
	enum mode mode;
	unsigned long seals_at_lock; /* seal calls when lock_secret was last asked */
	int seal_broken;	     /* SEAL_FAILS_AFTER_LOCK: the host's switch */
	long overlong;		     /* SEAL_OVERLONG: bytes claimed past the room (0 or 1) */
	size_t least_room, most_room; /* out_cap - app_len over every seal */
};

static struct counting counting;

static int c_seal(void *ctx, const struct tsm_tdx_record_ctx *rc, const uint8_t *app,
		  size_t app_len, uint8_t *out, size_t out_cap, size_t *out_len)
{
	struct counting *c = ctx;
	size_t room = out_cap - app_len;
	int status;

	c->calls[SEAL]++;
	if (!c->least_room || room < c->least_room)
		c->least_room = room;
	if (room > c->most_room)
		c->most_room = room;
	/* The seal after the LOCK's own: the device has locked the interface by then. */
	if (c->mode == SEAL_FAILS_AFTER_LOCK && c->seal_broken && c->calls[LOCK_SECRET] &&
	    c->calls[SEAL] > c->seals_at_lock + 1)
		return -1;
	status = c->model.seal(c->model.ctx, rc, app, app_len, out, out_cap, out_len);
	if (c->mode == SEAL_OVERLONG)
		*out_len = out_cap + (size_t)c->overlong;
	return status;
}

static int c_open(void *ctx, const struct tsm_tdx_record_ctx *rc, const uint8_t *record,
		  size_t record_len, uint8_t *out, size_t out_cap, size_t *out_len)
{
	struct counting *c = ctx;
	int status;

	c->calls[OPEN]++;
	if (c->mode == OPEN_FAILS)
		return -1;
	status = c->model.open(c->model.ctx, rc, record, record_len, out, out_cap, out_len);
	if (c->mode == OPEN_OVERLONG)
		*out_len = out_cap + 1;
	return status;
}

static int c_record_len(void *ctx, const uint8_t *bytes, size_t len, size_t *record_len)
{
	struct counting *c = ctx;
	int status;

	c->calls[RECORD_LEN]++;
	status = c->model.record_len(c->model.ctx, bytes, len, record_len);
	if (c->mode == RECORD_LEN_PAST)
		*record_len = len + 1;
	return status;
}

static uint64_t c_lock_secret(void *ctx, const struct tsm_tdx_record_ctx *rc)
{
	struct counting *c = ctx;
	uint64_t secret = c->model.lock_secret(c->model.ctx, rc);

	c->seals_at_lock = c->calls[SEAL];
	/* Asked again (for any LOCK), it answers a page lower per earlier call. */
	if (c->mode == SECRET_DRIFTS)
		secret -= (uint64_t)c->calls[LOCK_SECRET] * 4096u;
	c->calls[LOCK_SECRET]++;
	return secret;
}

static void c_report_digest(void *ctx, const uint8_t *report, size_t len, uint8_t *digest)
{
	struct counting *c = ctx;

	c->calls[REPORT_DIGEST]++;
	c->model.report_digest(c->model.ctx, report, len, digest);
}

/* One DOE exchange of the request the last call left (RCX devif_req_out_t) with the model. */
static void doe(void)
{
	if (model_doe(TSM_TDX_OUT_LENGTH(host.regs.rcx)) != TDX_SUCCESS)
		failures++;
}

/* The host's event loop: relay while the firmware says TDX_SPDM_REQUEST. */
static uint64_t relay(uint64_t status, uint64_t tdi)
{
	int rounds = 0;

	while (status == TDX_SPDM_REQUEST && rounds++ < 100) {
		doe();
		status = respond(tdi, 0);
	}
	return status;
}

/* TSM_DEVIF_STATE's outputs: TDISP state, state code, owner TDR. */
struct tdi_state {
	uint64_t tdisp, code, owner;
};

static struct tdi_state tdi_state(uint64_t tdi)
{
	struct tsm_tdx_regs *r = &host.regs;
	struct tdi_state st;

	memset(r, 0, sizeof(*r));
	r->rcx = tdi;
	call("TSM.DEVIF.STATE", TSM_DEVIF_STATE, r, TDX_SUCCESS);
	st.tdisp = r->rcx;
	st.code = r->rdx;
	st.owner = r->r8;
	return st;
}

/* Init's refusals of the session, then init with it. Returns 0 when initialized. */
static int init(void *pool, size_t pool_bytes, enum mode mode)
{
	struct tsm_tdx_session ops = { .ctx = &counting,
				       .seal = c_seal,
				       .open = c_open,
				       .record_len = c_record_len,
				       .lock_secret = c_lock_secret,
				       .report_digest = c_report_digest };
	struct tsm_tdx_session bad;
	struct tsm_tdx_regs *r = &host.regs;

	expect("model session, NULL ops", tsm_tdx_model_session(NULL),
	       TDX_OPERAND_INVALID | TDX_OPERAND_ID_RCX);
	expect("model session", tsm_tdx_model_session(&counting.model), TDX_SUCCESS);
	counting.mode = mode;

	expect("init, NULL session",
	       tsm_tdx_init_session(pool, pool_bytes, &host, sizeof(host), NULL),
	       TDX_OPERAND_INVALID | TDX_OPERAND_ID_R10);
	expect("init, NULL pool and NULL session",
	       tsm_tdx_init_session(NULL, pool_bytes, &host, sizeof(host), NULL),
	       TDX_OPERAND_INVALID | TDX_OPERAND_ID_RCX);
	bad = ops;
	bad.seal = NULL;
	expect("init, no seal", tsm_tdx_init_session(pool, pool_bytes, &host, sizeof(host), &bad),
	       TDX_OPERAND_INVALID | TDX_OPERAND_ID_SESSION_SEAL);
	bad = ops;
	bad.open = NULL;
	expect("init, no open", tsm_tdx_init_session(pool, pool_bytes, &host, sizeof(host), &bad),
	       TDX_OPERAND_INVALID | TDX_OPERAND_ID_SESSION_OPEN);
	bad = ops;
	bad.record_len = NULL;
	expect("init, no record_len",
	       tsm_tdx_init_session(pool, pool_bytes, &host, sizeof(host), &bad),
	       TDX_OPERAND_INVALID | TDX_OPERAND_ID_SESSION_RECORD_LEN);
	bad = ops;
	bad.lock_secret = NULL;
	expect("init, no lock_secret",
	       tsm_tdx_init_session(pool, pool_bytes, &host, sizeof(host), &bad),
	       TDX_OPERAND_INVALID | TDX_OPERAND_ID_SESSION_LOCK_SECRET);
	bad = ops;
	bad.report_digest = NULL;
	expect("init, no report_digest",
	       tsm_tdx_init_session(pool, pool_bytes, &host, sizeof(host), &bad),
	       TDX_OPERAND_INVALID | TDX_OPERAND_ID_SESSION_REPORT_DIGEST);
	memset(r, 0, sizeof(*r));
	r->rax = TDH_MEM_TRACK;
	expect("refused inits left it not ready", tsm_tdx_seamcall(r), TDX_SYS_NOT_READY);

	expect("init with the C session",
	       tsm_tdx_init_session(pool, pool_bytes, &host, sizeof(host), &ops),
	       TDX_SUCCESS);
	expect("init again", tsm_tdx_init_session(pool, pool_bytes, &host, sizeof(host), &ops),
	       TDX_SYSINIT_NOT_PENDING);
	/* The struct was copied: what the caller does with it now is not seen. */
	memset(&ops, 0, sizeof(ops));
	return failures;
}

/* TD, SPDM id, BARs, link, TDI, the report: everything the bind needs. Returns the TD. */
static uint64_t set_up(uint64_t bar, uint64_t bar_pages, uint64_t *tdi)
{
	struct tsm_tdx_regs *r = &host.regs;
	struct tsm_tdx_range_list *list = &host.list;
	struct tsm_tdx_spdm_config conf = { .vmm_spdm_cap = TSM_TDX_SPDM_CAP_KEY_UPD,
					    .certificate_slot_mask = 0xff };
	struct tsm_tdx_regs in;
	uint64_t td, dev, stream;

	memset(r, 0, sizeof(*r));
	r->rcx = (uint64_t)(uintptr_t)host.tdr;
	r->rdx = 1;
	call("create TD", TDH_MNG_CREATE, r, TDX_SUCCESS);
	td = (uint64_t)(uintptr_t)host.tdr;

	memset(r, 0, sizeof(*r));
	r->rcx = TSM_TDX_FUNC_ID(0, 0x0300);
	r->rdx = TSM_TDX_HPA_ARRAY((uintptr_t)host.spdm_mt, 1);
	call("create SPDM id", TDH_SPDM_CREATE, r, TDX_SUCCESS);
	dev = r->rcx;

	/* The range list rules of the header: first_page a byte address, 4 KiB aligned; at
	 * least one page. */
	memset(list, 0, sizeof(*list));
	list->count = 1;
	list->ranges[0].first_page = bar + 0x800;
	list->ranges[0].pages = (uint32_t)bar_pages;
	memset(r, 0, sizeof(*r));
	r->rcx = dev;
	r->rdx = (uint64_t)(uintptr_t)list;
	call("BARs, first_page not 4 KiB aligned", TSM_SPDM_BARS, r,
	     TDX_OPERAND_INVALID | TDX_OPERAND_ID_RDX);
	list->ranges[0].first_page = bar;
	list->ranges[0].pages = 0;
	memset(r, 0, sizeof(*r));
	r->rcx = dev;
	r->rdx = (uint64_t)(uintptr_t)list;
	call("BARs, no pages", TSM_SPDM_BARS, r, TSM_INVALID_RANGE | TDX_OPERAND_ID_RDX);
	list->ranges[0].first_page = 1ull << 52;
	list->ranges[0].pages = 1;
	memset(r, 0, sizeof(*r));
	r->rcx = dev;
	r->rdx = (uint64_t)(uintptr_t)list;
	call("BARs, first_page at 2^52", TSM_SPDM_BARS, r,
	     TDX_OPERAND_ADDR_RANGE_ERROR | TDX_OPERAND_ID_RDX);
	list->ranges[0].first_page = (1ull << 52) - 4096;
	list->ranges[0].pages = 2;
	memset(r, 0, sizeof(*r));
	r->rcx = dev;
	r->rdx = (uint64_t)(uintptr_t)list;
	call("BARs, running past 2^52", TSM_SPDM_BARS, r, TSM_INVALID_RANGE | TDX_OPERAND_ID_RDX);
	list->ranges[0].first_page = bar;
	list->ranges[0].pages = (uint32_t)bar_pages;
	memset(r, 0, sizeof(*r));
	r->rcx = dev;
	r->rdx = (uint64_t)(uintptr_t)list;
	call("register the BARs", TSM_SPDM_BARS, r, TDX_SUCCESS);

	memcpy(host.spdm_conf, &conf, sizeof(conf));
	memset(&in, 0, sizeof(in));
	in.rcx = dev;
	in.rdx = (uint64_t)(uintptr_t)host.spdm_conf;
	in.r8 = (uint64_t)(uintptr_t)host.response;
	in.r9 = (uint64_t)(uintptr_t)host.request;
	in.r10 = TSM_TDX_HPA_ARRAY((uintptr_t)host.dev_info, 1);
	*r = in;
	call("SPDM connect: relay this", TDH_SPDM_CONNECT, r, TDX_SPDM_REQUEST);
	if (tsm_tdx_model_doe(host.request, r->rcx, host.response, &host.response_len) !=
	    TDX_SUCCESS)
		failures++;
	*r = in;
	call("SPDM connect: the VERSION", TDH_SPDM_CONNECT, r, TDX_SUCCESS);
	memset(r, 0, sizeof(*r));
	r->rcx = TSM_TDX_STREAM_INFO_TYPE_SEL;
	r->rdx = dev;
	r->r8 = TSM_TDX_HPA_ARRAY((uintptr_t)host.ide_mt, 1);
	r->r10 = TSM_TDX_RID_ASSOC1(0x0300);
	r->r11 = TSM_TDX_RID_ASSOC2(0x0300, 0);
	r->r12 = TSM_TDX_ADDR_ASSOC1(0, 0xffffffffull);
	call("IDE stream create", TDH_IDE_STREAM_CREATE, r, TDX_SUCCESS);
	stream = r->rcx;
	memset(r, 0, sizeof(*r));
	r->rcx = dev;
	r->rdx = stream;
	r->r8 = TSM_TDX_IDE_KM_SETUP;
	r->r9 = (uint64_t)(uintptr_t)host.response;
	r->r10 = (uint64_t)(uintptr_t)host.request;
	call("IDE KM SETUP", TDH_IDE_STREAM_KM, r, TDX_SUCCESS);

	memset(r, 0, sizeof(*r));
	r->rcx = TSM_TDX_DEVIF_ID(dev, TSM_TDX_FUNC_ID(0, 0x0300));
	r->rdx = td;
	r->r8 = (uint64_t)(uintptr_t)host.devifcs;
	r->r9 = (uint64_t)(uintptr_t)host.td_buffer;
	r->r10 = (uint64_t)(uintptr_t)host.vmm_buffer;
	call("create TDI", TDH_DEVIF_CREATE, r, TDX_SUCCESS);
	*tdi = TSM_TDX_FUNC_ID(0, 0x0300);
	if (tsm_tdx_model_report(0x00000300, list) != TDX_SUCCESS)
		failures++;
	return td;
}

/* The whole flow through the C session. */
static void delegate(uint64_t td, uint64_t tdi, uint64_t bar, uint64_t bar_pages)
{
	const uint64_t gpa = 0x1000000000ull;
	struct tsm_tdx_regs *r = &host.regs;
	uint64_t status;
	int i, calls = 0;

	memset(r, 0, sizeof(*r));
	r->rcx = tdi;
	r->rdx = td;
	r->r8 = (uint64_t)(uintptr_t)host.request;
	call("bind: relay this", TSM_DEVIF_BIND, r, TDX_SPDM_REQUEST);
	expect("bind relayed", relay(TDX_SPDM_REQUEST, tdi), TDX_SUCCESS);

	memset(r, 0, sizeof(*r));
	r->rcx = TSM_TDX_PAGE_INFO(gpa, 1);
	r->rdx = td;
	r->r8 = bar;
	call("map 2M", TDH_MMIO_MAP, r, TDX_SUCCESS);
	memset(r, 0, sizeof(*r));
	r->rcx = bar;
	r->rdx = bar_pages;
	call("zap while bound", TSM_MMIO_ZAP_CHECK, r,
	     TDX_DEVIF_TDISP_INVALID_STATE | TDX_OPERAND_ID_RCX);
	do {
		memset(r, 0, sizeof(*r));
		r->rax = TSM_DEVIF_UNBIND;
		r->rcx = tdi;
		r->r8 = (uint64_t)(uintptr_t)host.request;
		status = relay(tsm_tdx_seamcall(r), tdi);
	} while (status == TDX_INTERRUPTED_RESUMABLE && ++calls < 1000);
	expect("unbind relayed", status, TDX_SUCCESS);
	memset(r, 0, sizeof(*r));
	r->rcx = bar;
	r->rdx = bar_pages;
	call("zap after unbind", TSM_MMIO_ZAP_CHECK, r, TDX_SUCCESS);

	for (i = 0; i < CALLS; i++) {
		printf("%-34s %lu call(s) %s\n", call_names[i], counting.calls[i],
		       counting.calls[i] ? "ok" : "UNEXPECTED");
		if (!counting.calls[i])
			failures++;
	}
}

/* The session refuses the device's answer: refused, nothing changes, the request waits. */
static void refused(uint64_t td, uint64_t tdi)
{
	static uint8_t first[TSM_TDX_MESSAGE_PAGE_BYTES];
	struct tsm_tdx_regs *r = &host.regs;
	unsigned long opens = counting.calls[OPEN], lens = counting.calls[RECORD_LEN];
	struct tdi_state state, now;
	int round;

	memset(r, 0, sizeof(*r));
	r->rcx = tdi;
	r->rdx = td;
	r->r8 = (uint64_t)(uintptr_t)host.request;
	call("bind: relay this", TSM_DEVIF_BIND, r, TDX_SPDM_REQUEST);
	memcpy(first, host.request, sizeof(first));
	doe();
	state = tdi_state(tdi);
	for (round = 0; round < 2; round++) {
		expect("the device's answer refused", respond(tdi, 0),
		       TDX_DEVIF_TDISP_INVALID_MESSAGE | TDX_OPERAND_ID_RDX);
		now = tdi_state(tdi);
		expect("  TDI state, code, owner unchanged",
		       (uint64_t)memcmp(&now, &state, sizeof(now)), 0);
	}
	/* The request still waits: re-read, it is the one first written. */
	memset(host.request, 0, sizeof(host.request));
	memset(r, 0, sizeof(*r));
	r->rcx = tdi;
	r->rdx = TSM_TDX_TDISP_LOCK_INTERFACE;
	r->r8 = (uint64_t)(uintptr_t)host.request;
	call("the request again", TDH_DEVIF_REQUEST, r, TDX_SPDM_REQUEST);
	expect("  the same bytes", (uint64_t)memcmp(first, host.request, sizeof(first)), 0);
	/* The firmware asked the C session (not something else) each time. */
	expect("  the session was asked",
	       counting.mode == RECORD_LEN_PAST ? counting.calls[RECORD_LEN] > lens :
						 counting.calls[OPEN] > opens,
	       1);
}

/* TSM_MMIO_ZAP_CHECK of `pages` pages at `at`. */
static void zap_check(const char *what, uint64_t at, uint64_t pages, uint64_t want)
{
	struct tsm_tdx_regs *r = &host.regs;

	memset(r, 0, sizeof(*r));
	r->rcx = at;
	r->rdx = pages;
	call(what, TSM_MMIO_ZAP_CHECK, r, want);
}

/* TSM_DEVIF_BIND of `tdi` for `td`, leaving its first request. */
static uint64_t bind(uint64_t td, uint64_t tdi, uint64_t want)
{
	struct tsm_tdx_regs *r = &host.regs;

	memset(r, 0, sizeof(*r));
	r->rcx = tdi;
	r->rdx = td;
	r->r8 = (uint64_t)(uintptr_t)host.request;
	return call("bind: relay this", TSM_DEVIF_BIND, r, want);
}

/* lock_secret drifts: asked once per LOCK, re-read and re-send included; the TDI owns what
 * the device reported. */
static void secret_drifts(uint64_t td, uint64_t tdi, uint64_t bar)
{
	static uint8_t first[TSM_TDX_MESSAGE_PAGE_BYTES];
	const uint64_t reported = 8;
	struct tsm_tdx_range_list *list = &host.list;
	struct tsm_tdx_regs *r = &host.regs;
	uint64_t status;
	int rounds = 0, locks = 0;

	/* The device reports the BAR's first 8 pages. */
	memset(list, 0, sizeof(*list));
	list->count = 1;
	list->ranges[0].first_page = bar;
	list->ranges[0].pages = (uint32_t)reported;
	expect("the device reports 8 pages", tsm_tdx_model_report(0x00000300, list),
	       TDX_SUCCESS);
	status = bind(td, tdi, TDX_SPDM_REQUEST);
	while (status == TDX_SPDM_REQUEST && rounds++ < 100) {
		if ((r->rcx & 0xff) == TSM_TDX_TDISP_LOCK_INTERFACE) {
			locks++;
			memcpy(first, host.request, sizeof(first));
			memset(host.request, 0, sizeof(host.request));
			memset(r, 0, sizeof(*r));
			r->rcx = tdi;
			r->rdx = TSM_TDX_TDISP_LOCK_INTERFACE;
			r->r8 = (uint64_t)(uintptr_t)host.request;
			call("the LOCK re-read", TDH_DEVIF_REQUEST, r, TDX_SPDM_REQUEST);
			expect("  the same bytes", (uint64_t)memcmp(first, host.request, sizeof(first)),
			       0);
			host.response_len = 0;
			expect("no answer: the LOCK re-sent", respond(tdi, 0), TDX_SPDM_REQUEST);
			expect("  the same bytes", (uint64_t)memcmp(first, host.request, sizeof(first)),
			       0);
		}
		doe();
		status = respond(tdi, 0);
	}
	expect("bind relayed", status, TDX_SUCCESS);
	expect("one LOCK", (uint64_t)locks, 1);
	expect("lock_secret asked once", counting.calls[LOCK_SECRET], 1);
	zap_check("the reported first page owned", bar, 1,
		  TDX_DEVIF_TDISP_INVALID_STATE | TDX_OPERAND_ID_RCX);
	zap_check("the reported last page owned", bar + (reported - 1) * 4096, 1,
		  TDX_DEVIF_TDISP_INVALID_STATE | TDX_OPERAND_ID_RCX);
	zap_check("the page after them free", bar + reported * 4096, 1, TDX_SUCCESS);
}

/* seal fails for the request after the LOCK: the bind ends; the next one unlocks first. */
static void seal_fails_after_lock(uint64_t td, uint64_t tdi)
{
	struct tdi_state before = tdi_state(tdi), now;
	uint64_t status;
	int rounds = 0;

	counting.seal_broken = 1;
	status = bind(td, tdi, TDX_SPDM_REQUEST);
	while (status == TDX_SPDM_REQUEST && rounds++ < 100) {
		doe();
		status = respond(tdi, 0);
	}
	expect("the seal after LOCK fails", status,
	       TSM_RELAY_BUFFER_TOO_SMALL | TDX_OPERAND_ID_TRANSPORT);
	expect("  LOCK was asked of the session", counting.calls[LOCK_SECRET], 1);
	now = tdi_state(tdi);
	expect("  TDI state, code, owner as before the bind",
	       (uint64_t)memcmp(&now, &before, sizeof(now)), 0);
	expect("  no request outstanding", respond(tdi, 0),
	       TDX_DEVIF_TDISP_OUT_REQ | TDX_OPERAND_ID_RCX);
	counting.seal_broken = 0;
	bind(td, tdi, TDX_SPDM_REQUEST);
	expect("the next bind starts with STOP", host.regs.rcx & 0xff,
	       TSM_TDX_TDISP_STOP_INTERFACE);
	expect("  and completes", relay(TDX_SPDM_REQUEST, tdi), TDX_SUCCESS);
}

/* seal's room is exactly the overhead; a record past it is refused, one filling it relayed. */
static void seal_overlong(uint64_t td, uint64_t tdi)
{
	static uint8_t page[TSM_TDX_MESSAGE_PAGE_BYTES];
	struct tdi_state before = tdi_state(tdi), now;

	memset(host.request, 0x5a, sizeof(host.request));
	memcpy(page, host.request, sizeof(page));
	counting.overlong = 1;
	bind(td, tdi, TSM_RELAY_BUFFER_TOO_SMALL | TDX_OPERAND_ID_TRANSPORT);
	now = tdi_state(tdi);
	expect("  TDI state, code, owner unchanged", (uint64_t)memcmp(&now, &before, sizeof(now)),
	       0);
	expect("  no request written", (uint64_t)memcmp(page, host.request, sizeof(page)), 0);
	counting.overlong = 0;
	bind(td, tdi, TDX_SPDM_REQUEST);
	expect("  a DOE object within the page",
	       TSM_TDX_OUT_LENGTH(host.regs.rcx) <= TSM_TDX_MESSAGE_PAGE_BYTES, 1);
	expect("seal's least room", counting.least_room, TSM_TDX_SESSION_MAX_OVERHEAD);
	expect("seal's most room", counting.most_room, TSM_TDX_SESSION_MAX_OVERHEAD);
}

int main(int argc, char **argv)
{
	enum { POOL_PAGES = 64 };
	const uint64_t bar = 0x80000000ull, bar_pages = 1024;
	const char *name = argc > 1 ? argv[1] : "delegate";
	enum mode mode;
	uint64_t td, tdi;
	void *pool = aligned_alloc(4096, POOL_PAGES * 4096);

	if (!pool)
		return 2;
	if (!strcmp(name, "delegate"))
		mode = DELEGATE;
	else if (!strcmp(name, "open-fails"))
		mode = OPEN_FAILS;
	else if (!strcmp(name, "open-overlong"))
		mode = OPEN_OVERLONG;
	else if (!strcmp(name, "record-len-past"))
		mode = RECORD_LEN_PAST;
	else if (!strcmp(name, "secret-drifts"))
		mode = SECRET_DRIFTS;
	else if (!strcmp(name, "seal-fails-after-lock"))
		mode = SEAL_FAILS_AFTER_LOCK;
	else if (!strcmp(name, "seal-overlong"))
		mode = SEAL_OVERLONG;
	else
		return 2;
	printf("mode %s\n", name);
	if (init(pool, POOL_PAGES * 4096, mode))
		goto out;
	td = set_up(bar, bar_pages, &tdi);
	switch (mode) {
	case DELEGATE:
		delegate(td, tdi, bar, bar_pages);
		break;
	case SECRET_DRIFTS:
		secret_drifts(td, tdi, bar);
		break;
	case SEAL_FAILS_AFTER_LOCK:
		seal_fails_after_lock(td, tdi);
		break;
	case SEAL_OVERLONG:
		seal_overlong(td, tdi);
		break;
	default:
		refused(td, tdi);
	}
out:
	printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
	return failures ? 1 : 0;
}
