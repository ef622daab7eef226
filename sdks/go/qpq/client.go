package qpq

/*
#include <stdlib.h>
#include <qpq.h>
*/
import "C"

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"time"
	"unsafe"
)

// Config says where a Client keeps its store and which server it talks to.
type Config struct {
	// DataDir is the account's store directory (one account per directory; created if missing).
	DataDir string
	// ServerAddr is the server's "host:port".
	ServerAddr string
	// ServerName is the TLS server name to verify; "" means "localhost".
	ServerName string
	// Passphrase unlocks the store (stretched with Argon2id). Set it or RawKey.
	Passphrase string
	// RawKey unlocks the store with a 32-byte key (e.g. from a keystore) instead.
	RawKey []byte
	// PinnedCertFile trusts exactly the DER certificate in this file.
	PinnedCertFile string
	// PinnedCertDER trusts exactly this DER certificate.
	PinnedCertDER []byte
	// Fingerprint trusts the certificate with this SHA-256 (64 hex digits, ':' allowed).
	// With none of the three, the WebPKI roots are trusted.
	Fingerprint string
	// RequestTimeout is each request's deadline; 0 means 15 s.
	RequestTimeout time.Duration
	// LockTimeout is how long Open waits for a store another process holds (0: fail with
	// ErrBusy at once).
	LockTimeout time.Duration
}

// Client is one account on one store, connected to one server. It is safe for concurrent
// use by many goroutines. Close it when done; later calls fail with ErrClosed.
type Client struct {
	mu   sync.RWMutex // read-held during every C call; Close takes it to free the handle
	h    *C.qpq_client
	once sync.Once
}

func (cfg Config) build() (*C.qpq_config, error) {
	dir, addr := cstr(cfg.DataDir), cstr(cfg.ServerAddr)
	defer free(dir)
	defer free(addr)
	var c *C.qpq_config
	if err := takeErr(C.qpq_config_new(dir, addr, &c)); err != nil {
		return nil, err
	}
	str := func(v string, set func(*C.char) *C.qpq_error) error {
		s := cstr(v)
		defer free(s)
		return takeErr(set(s))
	}
	buf := func(v []byte, set func(*C.uint8_t, C.size_t) *C.qpq_error) error {
		p := C.CBytes(v)
		defer C.free(p)
		return takeErr(set((*C.uint8_t)(p), C.size_t(len(v))))
	}
	var errs []error
	if cfg.ServerName != "" {
		errs = append(errs, str(cfg.ServerName, func(s *C.char) *C.qpq_error { return C.qpq_config_set_server_name(c, s) }))
	}
	if cfg.Passphrase != "" {
		errs = append(errs, str(cfg.Passphrase, func(s *C.char) *C.qpq_error { return C.qpq_config_set_passphrase(c, s) }))
	}
	if cfg.RawKey != nil {
		errs = append(errs, buf(cfg.RawKey, func(p *C.uint8_t, n C.size_t) *C.qpq_error { return C.qpq_config_set_raw_key(c, p, n) }))
	}
	if cfg.PinnedCertFile != "" {
		errs = append(errs, str(cfg.PinnedCertFile, func(s *C.char) *C.qpq_error { return C.qpq_config_set_pinned_cert_file(c, s) }))
	}
	if cfg.PinnedCertDER != nil {
		errs = append(errs, buf(cfg.PinnedCertDER, func(p *C.uint8_t, n C.size_t) *C.qpq_error { return C.qpq_config_set_pinned_cert_der(c, p, n) }))
	}
	if cfg.Fingerprint != "" {
		errs = append(errs, str(cfg.Fingerprint, func(s *C.char) *C.qpq_error { return C.qpq_config_set_fingerprint(c, s) }))
	}
	if cfg.RequestTimeout > 0 {
		errs = append(errs, takeErr(C.qpq_config_set_request_timeout_ms(c, C.uint64_t(cfg.RequestTimeout.Milliseconds()))))
	}
	errs = append(errs, takeErr(C.qpq_config_set_lock_timeout_ms(c, C.uint64_t(cfg.LockTimeout.Milliseconds()))))
	for _, err := range errs {
		if err != nil {
			C.qpq_config_free(c)
			return nil, err
		}
	}
	return c, nil
}

// Open opens (or creates) the encrypted store in cfg.DataDir and starts background receive.
// It needs no network. ErrStorage: wrong key (the file is untouched); ErrBusy: another
// process holds the store.
func Open(ctx context.Context, cfg Config) (*Client, error) {
	conf, err := cfg.build()
	if err != nil {
		return nil, err
	}
	type result struct {
		h   *C.qpq_client
		err error
	}
	done := make(chan result, 1)
	go func() {
		defer C.qpq_config_free(conf)
		var h *C.qpq_client
		err := takeErr(C.qpq_client_open(conf, &h))
		done <- result{h, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, r.err
		}
		c := &Client{h: r.h}
		runtime.SetFinalizer(c, (*Client).Close)
		return c, nil
	case <-ctx.Done():
		go func() { // the open finishes in the background: close what it opened
			if r := <-done; r.h != nil {
				C.qpq_client_free(r.h)
			}
		}()
		return nil, ctx.Err()
	}
}

// Close closes the client: blocked waits return, background receive stops, the store is
// released. Idempotent; it always returns nil.
func (c *Client) Close() error {
	c.once.Do(func() {
		runtime.SetFinalizer(c, nil)
		C.qpq_client_close(c.h) // wakes blocked waits; calls in flight finish with ErrClosed
		c.mu.Lock()
		C.qpq_client_free(c.h)
		c.h = nil
		c.mu.Unlock()
	})
	return nil
}

var errClosed = &Error{Code: CodeClosed, Message: "the client is closed"}

// local runs a C call that does not wait for the network.
func (c *Client) local(f func(h *C.qpq_client) error) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.h == nil {
		return errClosed
	}
	return f(c.h)
}

// do runs a C call until it returns or ctx is done; in the latter case the call finishes in
// the background and its result is dropped.
func (c *Client) do(ctx context.Context, f func(h *C.qpq_client) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if ctx.Done() == nil {
		return c.local(f)
	}
	done := make(chan error, 1)
	go func() { done <- c.local(f) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// wait runs a C event wait that ctx's cancellation interrupts (repeatedly, since an interrupt
// only reaches waits already started), and returns only once nothing uses the handle.
func (c *Client) wait(ctx context.Context, f func(h *C.qpq_client) error) error {
	return c.local(func(h *C.qpq_client) error {
		done, exited := make(chan struct{}), make(chan struct{})
		stop := context.AfterFunc(ctx, func() {
			defer close(exited)
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for {
				C.qpq_error_free(C.qpq_client_interrupt(h))
				select {
				case <-done:
					return
				case <-tick.C:
				}
			}
		})
		err := f(h)
		close(done)
		if !stop() {
			<-exited
		}
		return err
	})
}

func (c *Client) accountCall(ctx context.Context, f func(h *C.qpq_client, u, p *C.char, out **C.qpq_account) *C.qpq_error, username, password string) (Account, error) {
	u, p := cstr(username), cstr(password)
	var a Account
	err := c.do(ctx, func(h *C.qpq_client) error {
		defer free(u)
		defer free(p)
		var out *C.qpq_account
		if err := takeErr(f(h, u, p, &out)); err != nil {
			return err
		}
		defer C.qpq_account_free(out)
		a = account(out)
		return nil
	})
	return a, err
}

// Register creates the account (OPAQUE: the password never leaves this device), logs in and
// publishes this device's keys. ErrConflict when the name is taken.
func (c *Client) Register(ctx context.Context, username, password string) (Account, error) {
	return c.accountCall(ctx, func(h *C.qpq_client, u, p *C.char, out **C.qpq_account) *C.qpq_error {
		return C.qpq_client_register(h, u, p, out)
	}, username, password)
}

// Login logs in; a wrong password or an unknown user gives ErrUnauthorized.
func (c *Client) Login(ctx context.Context, username, password string) (Account, error) {
	return c.accountCall(ctx, func(h *C.qpq_client, u, p *C.char, out **C.qpq_account) *C.qpq_error {
		return C.qpq_client_login(h, u, p, out)
	}, username, password)
}

// RegisterOrLogin registers on first use and logs in when the name is taken; created tells
// which happened.
func (c *Client) RegisterOrLogin(ctx context.Context, username, password string) (a Account, created bool, err error) {
	var cr C.bool
	a, err = c.accountCall(ctx, func(h *C.qpq_client, u, p *C.char, out **C.qpq_account) *C.qpq_error {
		return C.qpq_client_register_or_login(h, u, p, out, &cr)
	}, username, password)
	return a, bool(cr), err
}

// Logout ends the session on the server (best effort) and forgets the token; the store stays.
func (c *Client) Logout(ctx context.Context) error {
	return c.do(ctx, func(h *C.qpq_client) error { return takeErr(C.qpq_client_logout(h)) })
}

// Account is the account in this client's store (logged in or not); false when there is
// none. Local: never waits for the network.
func (c *Client) Account() (Account, bool, error) {
	var a Account
	var ok bool
	err := c.local(func(h *C.qpq_client) error {
		var out *C.qpq_account
		if err := takeErr(C.qpq_client_account(h, &out)); err != nil {
			return err
		}
		if out != nil {
			defer C.qpq_account_free(out)
			a, ok = account(out), true
		}
		return nil
	})
	return a, ok, err
}

// ResolveUser looks a user up on the server; ErrNotFound when unknown.
func (c *Client) ResolveUser(ctx context.Context, username string) (Member, error) {
	u := cstr(username)
	var m Member
	err := c.do(ctx, func(h *C.qpq_client) error {
		defer free(u)
		var out *C.qpq_member
		if err := takeErr(C.qpq_client_resolve_user(h, u, &out)); err != nil {
			return err
		}
		defer C.qpq_member_free(out)
		m = member(out)
		return nil
	})
	return m, err
}

func (c *Client) idCall(ctx context.Context, arg string, f func(h *C.qpq_client, s *C.char, out *C.qpq_conversation_id) *C.qpq_error) (ConversationID, error) {
	s := cstr(arg)
	var id ConversationID
	err := c.do(ctx, func(h *C.qpq_client) error {
		defer free(s)
		var out C.qpq_conversation_id
		if err := takeErr(f(h, s, &out)); err != nil {
			return err
		}
		id = convID(out)
		return nil
	})
	return id, err
}

// CreateGroup creates a group named name, with this account as its admin; postQuantum picks
// the X-Wing ciphersuite.
func (c *Client) CreateGroup(ctx context.Context, name string, postQuantum bool) (ConversationID, error) {
	return c.idCall(ctx, name, func(h *C.qpq_client, s *C.char, out *C.qpq_conversation_id) *C.qpq_error {
		return C.qpq_client_create_group(h, s, C.bool(postQuantum), out)
	})
}

// CreateDM creates (or reuses) the DM with username.
func (c *Client) CreateDM(ctx context.Context, username string) (ConversationID, error) {
	return c.idCall(ctx, username, func(h *C.qpq_client, s *C.char, out *C.qpq_conversation_id) *C.qpq_error {
		return C.qpq_client_create_dm(h, s, out)
	})
}

// Invite adds every device of every named user in one commit. ErrNotFound for an unknown
// user, ErrAlreadyMember, ErrForbidden.
func (c *Client) Invite(ctx context.Context, conv ConversationID, usernames ...string) error {
	n := len(usernames)
	arr := (*[1 << 20]*C.char)(C.malloc(C.size_t(max(n, 1)) * C.size_t(unsafe.Sizeof((*C.char)(nil)))))[:n:n]
	for i, u := range usernames {
		arr[i] = cstr(u)
	}
	return c.do(ctx, func(h *C.qpq_client) error {
		defer func() {
			for _, p := range arr {
				free(p)
			}
			C.free(unsafe.Pointer(unsafe.SliceData(arr)))
		}()
		return takeErr(C.qpq_client_invite(h, cConvID(conv), unsafe.SliceData(arr), C.size_t(n)))
	})
}

func (c *Client) convCall(ctx context.Context, username string, f func(h *C.qpq_client, s *C.char) *C.qpq_error) error {
	return c.do(ctx, func(h *C.qpq_client) error {
		s := cstr(username) // made here, so a call ctx stops before it starts leaks nothing
		defer free(s)
		return takeErr(f(h, s))
	})
}

// Remove removes every device of username from the conversation (admins only in a group).
func (c *Client) Remove(ctx context.Context, conv ConversationID, username string) error {
	return c.convCall(ctx, username, func(h *C.qpq_client, s *C.char) *C.qpq_error {
		return C.qpq_client_remove(h, cConvID(conv), s)
	})
}

// Promote makes member username an admin of the group (only an admin may).
func (c *Client) Promote(ctx context.Context, conv ConversationID, username string) error {
	return c.convCall(ctx, username, func(h *C.qpq_client, s *C.char) *C.qpq_error {
		return C.qpq_client_promote(h, cConvID(conv), s)
	})
}

// Leave leaves the conversation; its history stays readable.
func (c *Client) Leave(ctx context.Context, conv ConversationID) error {
	return c.do(ctx, func(h *C.qpq_client) error { return takeErr(C.qpq_client_leave(h, cConvID(conv))) })
}

// Accept accepts a conversation whose Consent is ConsentRequested: it becomes ConsentAllowed
// and its members count as contacts (sending in it accepts it too). ErrNotFound for an
// unknown conversation. Local only: ctx only stops a call not yet started.
func (c *Client) Accept(ctx context.Context, conv ConversationID) error {
	return c.do(ctx, func(h *C.qpq_client) error { return takeErr(C.qpq_client_accept(h, cConvID(conv))) })
}

// Decline leaves the conversation if still a member (as Leave) and marks it ConsentDenied; its
// history stays. With block, it also blocks the account that invited this one (as Block).
// ErrNotFound for an unknown conversation.
func (c *Client) Decline(ctx context.Context, conv ConversationID, block bool) error {
	return c.do(ctx, func(h *C.qpq_client) error {
		return takeErr(C.qpq_client_decline(h, cConvID(conv), C.bool(block)))
	})
}

// Block blocks username on the server: its messages no longer reach this account and it
// cannot add this account to a conversation (ErrForbidden). Shared groups keep working; it
// leaves or declines nothing by itself. Idempotent; ErrNotFound for an unknown user.
func (c *Client) Block(ctx context.Context, username string) error {
	return c.convCall(ctx, username, func(h *C.qpq_client, s *C.char) *C.qpq_error { return C.qpq_client_block(h, s) })
}

// Unblock ends a block made by Block. Idempotent.
func (c *Client) Unblock(ctx context.Context, username string) error {
	return c.convCall(ctx, username, func(h *C.qpq_client, s *C.char) *C.qpq_error { return C.qpq_client_unblock(h, s) })
}

// Blocked lists the usernames this account blocks, as the server stores them.
func (c *Client) Blocked(ctx context.Context) ([]string, error) {
	var out []string
	err := c.do(ctx, func(h *C.qpq_client) error {
		var l *C.qpq_string_list
		if err := takeErr(C.qpq_client_blocked(h, &l)); err != nil {
			return err
		}
		defer C.qpq_string_list_free(l)
		for i := range int(C.qpq_string_list_len(l)) {
			out = append(out, gostr(C.qpq_string_list_get(l, C.size_t(i))))
		}
		return nil
	})
	return out, err
}

// RotateKeys gives this device fresh key material in the conversation (a self-update commit).
func (c *Client) RotateKeys(ctx context.Context, conv ConversationID) error {
	return c.do(ctx, func(h *C.qpq_client) error { return takeErr(C.qpq_client_rotate_keys(h, cConvID(conv))) })
}

// Send stores body in the history and the outbox and returns its id at once. Delivery is
// reported by a MessageSent or MessageFailed event, never as an error here; an error means
// nothing was stored.
func (c *Client) Send(ctx context.Context, conv ConversationID, body Body) (MessageID, error) {
	return c.send(ctx, conv, nil, body)
}

// SendWithID is Send with the caller's id: a message already stored with it is not sent again.
func (c *Client) SendWithID(ctx context.Context, conv ConversationID, id MessageID, body Body) (MessageID, error) {
	return c.send(ctx, conv, &id, body)
}

// SendText sends a text body.
func (c *Client) SendText(ctx context.Context, conv ConversationID, text string) (MessageID, error) {
	return c.send(ctx, conv, nil, Text(text))
}

func (c *Client) send(ctx context.Context, conv ConversationID, id *MessageID, body Body) (MessageID, error) {
	b, err := newBody(body)
	if err != nil {
		return MessageID{}, err
	}
	var out MessageID
	err = c.do(ctx, func(h *C.qpq_client) error {
		defer C.qpq_body_free(b)
		var m C.qpq_message_id
		var e *C.qpq_error
		if id != nil {
			e = C.qpq_client_send_with_id(h, cConvID(conv), cMsgID(*id), b, &m)
		} else {
			e = C.qpq_client_send(h, cConvID(conv), b, &m)
		}
		out = msgID(m)
		return takeErr(e)
	})
	return out, err
}

// Conversations lists every local conversation (active or not). Local.
func (c *Client) Conversations() ([]Conversation, error) {
	var out []Conversation
	err := c.local(func(h *C.qpq_client) error {
		var l *C.qpq_conversation_list
		if err := takeErr(C.qpq_client_conversations(h, &l)); err != nil {
			return err
		}
		defer C.qpq_conversation_list_free(l)
		for i := range int(C.qpq_conversation_list_len(l)) {
			out = append(out, conversation(C.qpq_conversation_list_get(l, C.size_t(i))))
		}
		return nil
	})
	return out, err
}

func (c *Client) oneConversation(h *C.qpq_client, id ConversationID, f func(*C.qpq_conversation) error) error {
	var out *C.qpq_conversation
	if err := takeErr(C.qpq_client_conversation(h, cConvID(id), &out)); err != nil {
		return err
	}
	defer C.qpq_conversation_free(out)
	return f(out)
}

// Conversation is one conversation; ErrNotFound when unknown. Local.
func (c *Client) Conversation(id ConversationID) (Conversation, error) {
	var conv Conversation
	err := c.local(func(h *C.qpq_client) error {
		return c.oneConversation(h, id, func(p *C.qpq_conversation) error { conv = conversation(p); return nil })
	})
	return conv, err
}

// DisplayName is the name to show for a conversation: the group's name, or "@peer" for a DM.
// Local.
func (c *Client) DisplayName(id ConversationID) (string, error) {
	var name string
	err := c.local(func(h *C.qpq_client) error {
		return c.oneConversation(h, id, func(p *C.qpq_conversation) error {
			var s *C.char
			if err := takeErr(C.qpq_client_display_name(h, p, &s)); err != nil {
				return err
			}
			defer C.qpq_string_free(s)
			name = C.GoString(s)
			return nil
		})
	})
	return name, err
}

// FindConversation finds a conversation by "#2"/"2" (position), a hex id prefix (4+
// digits), its display name or "@bob"; ErrInvalidInput when several match. Local.
func (c *Client) FindConversation(what string) (Conversation, error) {
	w := cstr(what)
	defer free(w)
	var conv Conversation
	err := c.local(func(h *C.qpq_client) error {
		var out *C.qpq_conversation
		if err := takeErr(C.qpq_client_find_conversation(h, w, &out)); err != nil {
			return err
		}
		defer C.qpq_conversation_free(out)
		conv = conversation(out)
		return nil
	})
	return conv, err
}

// Messages returns up to limit messages, oldest first, received before before (the zero
// time: the latest page, which clears Unread). Page back with the first message's
// ReceivedAt. Local.
func (c *Client) Messages(conv ConversationID, limit int, before time.Time) ([]Message, error) {
	var b uint64
	if !before.IsZero() {
		b = uint64(before.UnixMilli())
	}
	var out []Message
	err := c.local(func(h *C.qpq_client) error {
		var l *C.qpq_message_list
		if err := takeErr(C.qpq_client_messages(h, cConvID(conv), C.size_t(limit), C.uint64_t(b), &l)); err != nil {
			return err
		}
		defer C.qpq_message_list_free(l)
		for i := range int(C.qpq_message_list_len(l)) {
			out = append(out, message(C.qpq_message_list_get(l, C.size_t(i))))
		}
		return nil
	})
	return out, err
}

// Members lists the conversation's members as the MLS group sees them. Local.
func (c *Client) Members(conv ConversationID) ([]Member, error) {
	var out []Member
	err := c.local(func(h *C.qpq_client) error {
		var l *C.qpq_member_list
		if err := takeErr(C.qpq_client_members(h, cConvID(conv), &l)); err != nil {
			return err
		}
		defer C.qpq_member_list_free(l)
		for i := range int(C.qpq_member_list_len(l)) {
			out = append(out, member(C.qpq_member_list_get(l, C.size_t(i))))
		}
		return nil
	})
	return out, err
}

// SafetyNumber is the safety number between this account and username (60 digits in 12
// groups): equal on both sides when no one is in the middle.
func (c *Client) SafetyNumber(ctx context.Context, username string) (string, error) {
	u := cstr(username)
	var out string
	err := c.do(ctx, func(h *C.qpq_client) error {
		defer free(u)
		var s *C.char
		if err := takeErr(C.qpq_client_safety_number(h, u, &s)); err != nil {
			return err
		}
		defer C.qpq_string_free(s)
		out = C.GoString(s)
		return nil
	})
	return out, err
}

// Sync fetches and processes everything queued now, sends the outbox and returns the events
// produced (they are not also delivered to NextEvent or Events).
func (c *Client) Sync(ctx context.Context) ([]Event, error) {
	var out []Event
	err := c.do(ctx, func(h *C.qpq_client) error {
		var l *C.qpq_event_list
		if err := takeErr(C.qpq_client_sync(h, &l)); err != nil {
			return err
		}
		defer C.qpq_event_list_free(l)
		for i := range int(C.qpq_event_list_len(l)) {
			out = append(out, event(C.qpq_event_list_get(l, C.size_t(i))))
		}
		return nil
	})
	return out, err
}

func timeoutMs(ctx context.Context) C.uint64_t {
	if dl, ok := ctx.Deadline(); ok {
		return C.uint64_t(max(time.Until(dl).Milliseconds(), 0))
	}
	return C.uint64_t(time.Hour.Milliseconds())
}

// pull repeats one event wait until it yields an event, ctx ends or an error other than
// another wait's interruption happens.
func (c *Client) pull(ctx context.Context, f func(h *C.qpq_client, ms C.uint64_t, out **C.qpq_event) *C.qpq_error) (Event, uint64, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		var ev Event
		var cursor uint64
		err := c.wait(ctx, func(h *C.qpq_client) error {
			var out *C.qpq_event
			if err := takeErr(f(h, timeoutMs(ctx), &out)); err != nil {
				return err
			}
			if out != nil {
				defer C.qpq_event_free(out)
				ev, cursor = event(out), uint64(C.qpq_event_cursor(out))
			}
			return nil
		})
		switch {
		case ev != nil:
			return ev, cursor, nil
		case err == nil:
			if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl.Add(-time.Millisecond)) {
				return nil, 0, context.DeadlineExceeded
			}
		case errors.Is(err, ErrCancelled) && ctx.Err() != nil:
			return nil, 0, ctx.Err()
		case !errors.Is(err, ErrCancelled): // a cancelled wait that is not ours: wait again
			return nil, 0, err
		}
	}
}

// NextEvent takes the next event from background receive, waiting until one comes or ctx
// ends (then it returns ctx.Err(): context.DeadlineExceeded when nothing came in time).
func (c *Client) NextEvent(ctx context.Context) (Event, error) {
	ev, _, err := c.pull(ctx, func(h *C.qpq_client, ms C.uint64_t, out **C.qpq_event) *C.qpq_error {
		return C.qpq_client_next_event(h, ms, out)
	})
	return ev, err
}

// WaitEventAfter returns the first event numbered after cursor (0: the oldest kept) and its
// number, waiting like NextEvent. It does not consume: each reader resumes from the last
// number it handled, without gaps unless more than 4,096 events passed meanwhile.
func (c *Client) WaitEventAfter(ctx context.Context, cursor uint64) (Event, uint64, error) {
	return c.pull(ctx, func(h *C.qpq_client, ms C.uint64_t, out **C.qpq_event) *C.qpq_error {
		return C.qpq_client_wait_event_after(h, C.uint64_t(cursor), ms, out)
	})
}

// EventCursor is the number of the newest event so far (0: none yet).
func (c *Client) EventCursor() (uint64, error) {
	var n C.uint64_t
	err := c.local(func(h *C.qpq_client) error { return takeErr(C.qpq_client_event_cursor(h, &n)) })
	return uint64(n), err
}

// Events delivers the events NextEvent would return on a channel, until ctx ends or the
// client closes (then the channel is closed). Use one consumer per client: each event goes
// to one reader.
func (c *Client) Events(ctx context.Context) <-chan Event {
	ch := make(chan Event, 64)
	go func() {
		defer close(ch)
		for {
			ev, err := c.NextEvent(ctx)
			if err != nil {
				return
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch
}

// Interrupt makes every event wait blocked now return (NextEvent and WaitEventAfter retry
// unless their own context ended).
func (c *Client) Interrupt() error {
	return c.local(func(h *C.qpq_client) error { return takeErr(C.qpq_client_interrupt(h)) })
}

// Ping measures the round trip of a health call to the server.
func (c *Client) Ping(ctx context.Context) (time.Duration, error) {
	var us C.uint64_t
	err := c.do(ctx, func(h *C.qpq_client) error { return takeErr(C.qpq_client_ping(h, &us)) })
	return time.Duration(us) * time.Microsecond, err
}
