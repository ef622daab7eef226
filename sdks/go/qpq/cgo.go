package qpq

// The static engine library of this repository (build it with `cargo build -p qpq-ffi`) and
// the system libraries it needs.

/*
#cgo CFLAGS: -I${SRCDIR}/../../../ffi/include
#cgo LDFLAGS: ${SRCDIR}/../../../target/debug/libqpq.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
#include <stdlib.h>
#include <qpq.h>
*/
import "C"

import (
	"time"
	"unsafe"
)

// cstr is a C copy of s; free it with C.free.
func cstr(s string) *C.char { return C.CString(s) }

func free(p *C.char) { C.free(unsafe.Pointer(p)) }

func gostr(p *C.char) string {
	if p == nil {
		return ""
	}
	return C.GoString(p)
}

func key32(p *C.uint8_t) (k [32]byte) {
	if p != nil {
		copy(k[:], unsafe.Slice((*byte)(unsafe.Pointer(p)), 32))
	}
	return k
}

func goBytes(p *C.uint8_t, n C.size_t) []byte {
	if p == nil {
		return nil
	}
	return C.GoBytes(unsafe.Pointer(p), C.int(n))
}

func convID(id C.qpq_conversation_id) ConversationID {
	return *(*ConversationID)(unsafe.Pointer(&id.bytes))
}

func msgID(id C.qpq_message_id) MessageID {
	return *(*MessageID)(unsafe.Pointer(&id.bytes))
}

func cConvID(id ConversationID) *C.qpq_conversation_id {
	var c C.qpq_conversation_id
	*(*ConversationID)(unsafe.Pointer(&c.bytes)) = id
	return &c
}

func cMsgID(id MessageID) *C.qpq_message_id {
	var c C.qpq_message_id
	*(*MessageID)(unsafe.Pointer(&c.bytes)) = id
	return &c
}

func millis(ms C.uint64_t) time.Time {
	return time.UnixMilli(int64(ms))
}

// takeErr converts (and frees) a qpq_error; nil for success.
func takeErr(e *C.qpq_error) error {
	if e == nil {
		return nil
	}
	defer C.qpq_error_free(e)
	return &Error{
		Code:       Code(C.qpq_error_code(e)),
		Message:    gostr(C.qpq_error_message(e)),
		RetryAfter: time.Duration(C.qpq_error_retry_after_ms(e)) * time.Millisecond,
	}
}

func account(a *C.qpq_account) Account {
	return Account{
		Username:    gostr(C.qpq_account_username(a)),
		IdentityKey: key32(C.qpq_account_identity_key(a)),
		DeviceKey:   key32(C.qpq_account_device_key(a)),
	}
}

func conversation(c *C.qpq_conversation) Conversation {
	n := int(C.qpq_conversation_member_count(c))
	members := make([]string, n)
	for i := range n {
		members[i] = gostr(C.qpq_conversation_member(c, C.size_t(i)))
	}
	kind := DM
	if C.qpq_conversation_get_kind(c) == C.QPQ_CONVERSATION_GROUP {
		kind = Group
	}
	return Conversation{
		ID:          convID(C.qpq_conversation_get_id(c)),
		Kind:        kind,
		Name:        gostr(C.qpq_conversation_name(c)),
		PostQuantum: bool(C.qpq_conversation_post_quantum(c)),
		Ciphersuite: gostr(C.qpq_conversation_ciphersuite(c)),
		Epoch:       uint64(C.qpq_conversation_epoch(c)),
		Members:     members,
		Active:      bool(C.qpq_conversation_active(c)),
		Unread:      uint64(C.qpq_conversation_unread(c)),
		Consent:     Consent(C.qpq_conversation_consent(c)),
		InvitedBy:   gostr(C.qpq_conversation_invited_by(c)),
	}
}

func body(b *C.qpq_body) Body {
	var n C.size_t
	switch C.qpq_body_get_kind(b) {
	case C.QPQ_BODY_TEXT:
		p := C.qpq_body_text(b, &n)
		return Text(C.GoStringN(p, C.int(n)))
	case C.QPQ_BODY_APP:
		ct := gostr(C.qpq_body_content_type(b))
		return App{ContentType: ct, Data: goBytes(C.qpq_body_bytes(b, &n), n)}
	case C.QPQ_BODY_REPLY:
		p := C.qpq_body_text(b, &n)
		return Reply{To: msgID(C.qpq_body_target(b)), Text: C.GoStringN(p, C.int(n))}
	case C.QPQ_BODY_REACTION:
		return Reaction{To: msgID(C.qpq_body_target(b)), Emoji: gostr(C.qpq_body_emoji(b)), Remove: bool(C.qpq_body_removed(b))}
	case C.QPQ_BODY_EDIT:
		p := C.qpq_body_text(b, &n)
		return Edit{Of: msgID(C.qpq_body_target(b)), Text: C.GoStringN(p, C.int(n))}
	case C.QPQ_BODY_DELETE:
		return Delete{Of: msgID(C.qpq_body_target(b))}
	case C.QPQ_BODY_FILE:
		var k C.size_t
		sha := C.qpq_body_file_hash_or_key(b, false, &n)
		key := C.qpq_body_file_hash_or_key(b, true, &k)
		return File{Name: gostr(C.qpq_body_file_name(b)), MimeType: gostr(C.qpq_body_mime_type(b)),
			Size: uint64(C.qpq_body_file_size(b)), SHA256: goBytes(sha, n), Key: goBytes(key, k)}
	}
	return nil
}

// newBody is the C form of b; free it with C.qpq_body_free.
func newBody(b Body) (*C.qpq_body, error) {
	var out *C.qpq_body
	var e *C.qpq_error
	switch v := b.(type) {
	case Text:
		s := cstr(string(v))
		defer free(s)
		e = C.qpq_body_new_text(s, &out)
	case App:
		ct := cstr(v.ContentType)
		defer free(ct)
		data := C.CBytes(v.Data)
		defer C.free(data)
		e = C.qpq_body_new_app(ct, (*C.uint8_t)(data), C.size_t(len(v.Data)), &out)
	case Reply:
		s := cstr(v.Text)
		defer free(s)
		e = C.qpq_body_new_reply(cMsgID(v.To), s, &out)
	case Reaction:
		s := cstr(v.Emoji)
		defer free(s)
		e = C.qpq_body_new_reaction(cMsgID(v.To), s, C.bool(v.Remove), &out)
	case Edit:
		s := cstr(v.Text)
		defer free(s)
		e = C.qpq_body_new_edit(cMsgID(v.Of), s, &out)
	case Delete:
		e = C.qpq_body_new_delete(cMsgID(v.Of), &out)
	case File:
		n, m := cstr(v.Name), cstr(v.MimeType)
		defer free(n)
		defer free(m)
		sha, key := C.CBytes(v.SHA256), C.CBytes(v.Key)
		defer C.free(sha)
		defer C.free(key)
		e = C.qpq_body_new_file(n, m, C.uint64_t(v.Size), (*C.uint8_t)(sha), C.size_t(len(v.SHA256)),
			(*C.uint8_t)(key), C.size_t(len(v.Key)), &out)
	default:
		return nil, &Error{Code: CodeInvalidInput, Message: "a nil or unknown body"}
	}
	return out, takeErr(e)
}

func message(m *C.qpq_message) Message {
	return Message{
		ID:           msgID(C.qpq_message_get_id(m)),
		Conversation: convID(C.qpq_message_conversation(m)),
		Sender:       gostr(C.qpq_message_sender(m)),
		SenderDevice: key32(C.qpq_message_sender_device(m)),
		Body:         body(C.qpq_message_body(m)),
		SentAt:       millis(C.qpq_message_sent_at_ms(m)),
		ReceivedAt:   millis(C.qpq_message_received_at_ms(m)),
		Outgoing:     bool(C.qpq_message_outgoing(m)),
		Delivery:     Delivery(C.qpq_message_delivery(m)),
	}
}

func member(m *C.qpq_member) Member {
	out := Member{Username: gostr(C.qpq_member_username(m))}
	if k := C.qpq_member_identity_key(m); k != nil {
		key := key32(k)
		out.IdentityKey = &key
	}
	for i := range int(C.qpq_member_device_count(m)) {
		out.Devices = append(out.Devices, key32(C.qpq_member_device(m, C.size_t(i))))
	}
	return out
}

func event(e *C.qpq_event) Event {
	names := func(removed bool) []string {
		var out []string
		for i := range int(C.qpq_event_member_count(e, C.bool(removed))) {
			out = append(out, gostr(C.qpq_event_member(e, C.bool(removed), C.size_t(i))))
		}
		return out
	}
	var left []string
	for i := range int(C.qpq_event_left_count(e)) {
		left = append(left, gostr(C.qpq_event_left_member(e, C.size_t(i))))
	}
	conv := convID(C.qpq_event_conversation_id(e))
	switch C.qpq_event_get_kind(e) {
	case C.QPQ_EVENT_MESSAGE:
		return MessageReceived{Message: message(C.qpq_event_message(e))}
	case C.QPQ_EVENT_CONVERSATION_JOINED:
		return ConversationJoined{Conversation: conversation(C.qpq_event_conversation(e))}
	case C.QPQ_EVENT_MEMBERS_CHANGED:
		return MembersChanged{Conversation: conv, By: gostr(C.qpq_event_by(e)), Added: names(false), Removed: names(true),
			Left: left, Epoch: uint64(C.qpq_event_epoch(e))}
	case C.QPQ_EVENT_REMOVED:
		return Removed{Conversation: conv, By: gostr(C.qpq_event_by(e)), Left: bool(C.qpq_event_left(e))}
	case C.QPQ_EVENT_CONNECTION_CHANGED:
		return ConnectionChanged{Connected: bool(C.qpq_event_connected(e))}
	case C.QPQ_EVENT_MESSAGE_SENT:
		return MessageSent{Conversation: conv, ID: msgID(C.qpq_event_message_id(e))}
	case C.QPQ_EVENT_MESSAGE_FAILED:
		return MessageFailed{Conversation: conv, ID: msgID(C.qpq_event_message_id(e)),
			Err: &Error{Code: Code(C.qpq_event_error_code(e)), Message: gostr(C.qpq_event_error_message(e))}}
	case C.QPQ_EVENT_CONVERSATION_BROKEN:
		return ConversationBroken{Conversation: conv, Reason: gostr(C.qpq_event_reason(e))}
	case C.QPQ_EVENT_CONVERSATION_RECOVERED:
		return ConversationRecovered{Conversation: conv}
	}
	return nil
}
