package qpq

import (
	"encoding/hex"
	"strconv"
	"time"
)

// ConversationID identifies a conversation (the server's channel id and the MLS group id).
type ConversationID [16]byte

// String is the id in lower-case hex.
func (id ConversationID) String() string { return hex.EncodeToString(id[:]) }

// ParseConversationID parses the 32 hex digits (either case) String gives; an *Error with
// CodeInvalidInput otherwise.
func ParseConversationID(s string) (ConversationID, error) {
	var id ConversationID
	return id, parseHex(id[:], s)
}

// ParseMessageID parses the 32 hex digits (either case) String gives; an *Error with
// CodeInvalidInput otherwise.
func ParseMessageID(s string) (MessageID, error) {
	var id MessageID
	return id, parseHex(id[:], s)
}

func parseHex(dst []byte, s string) error {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(dst) {
		return &Error{Code: CodeInvalidInput, Message: "an id is " + strconv.Itoa(2*len(dst)) + " hex digits"}
	}
	copy(dst, b)
	return nil
}

// MessageID identifies a message; the sender chooses it.
type MessageID [16]byte

// String is the id in lower-case hex.
func (id MessageID) String() string { return hex.EncodeToString(id[:]) }

// Account is this client's account.
type Account struct {
	// Username is the account's name on the server.
	Username string
	// IdentityKey is the account identity key, the same on every device.
	IdentityKey [32]byte
	// DeviceKey is this device's key (its MLS signature key).
	DeviceKey [32]byte
}

// ConversationKind tells a DM from a group.
type ConversationKind int

const (
	// DM is a conversation between two accounts.
	DM ConversationKind = iota + 1
	// Group is a conversation with any number of members.
	Group
)

// Conversation is a conversation as stored locally.
type Conversation struct {
	// ID is the conversation's id.
	ID ConversationID
	// Kind is DM or Group.
	Kind ConversationKind
	// Name is the group's name, or the peer's username for a DM.
	Name string
	// PostQuantum is true when the group uses the X-Wing (ML-KEM-768 + X25519) ciphersuite.
	PostQuantum bool
	// Ciphersuite is the MLS ciphersuite's name.
	Ciphersuite string
	// Epoch is the current MLS epoch.
	Epoch uint64
	// Members are the members' usernames, sorted, each once.
	Members []string
	// Active is false once this account was removed or left.
	Active bool
	// Unread counts received messages not yet read through Client.Messages.
	Unread uint64
	// Consent says whether the user wants the conversation: ConsentRequested for an
	// invitation from a stranger until Client.Accept or Client.Decline.
	Consent Consent
	// InvitedBy is who invited this account; "" for a conversation this device created.
	InvitedBy string
}

// Consent is whether the user wants a conversation (ADR 0060). It changes nothing about
// delivery: a requested conversation's messages arrive as usual; an app shows them apart (a
// "requests" list) until Client.Accept or Client.Decline.
type Consent int

const (
	// ConsentAllowed marks a conversation created here, accepted, written in, or from a contact.
	ConsentAllowed Consent = iota + 1
	// ConsentRequested marks one joined by an invitation from someone this account shares no
	// allowed conversation with.
	ConsentRequested
	// ConsentDenied marks a declined conversation: left, and kept only as history.
	ConsentDenied
)

// String is the consent's name ("allowed", "requested", "denied").
func (c Consent) String() string {
	switch c {
	case ConsentAllowed:
		return "allowed"
	case ConsentRequested:
		return "requested"
	case ConsentDenied:
		return "denied"
	}
	return "Consent(" + strconv.Itoa(int(c)) + ")"
}

// Delivery is where a message is on its way.
type Delivery int

const (
	// Received marks an incoming message (or one sent from another device of this account).
	Received Delivery = iota + 1
	// Queued marks a message stored here and not yet accepted by the server.
	Queued
	// Sent marks a message the server accepted for every member.
	Sent
	// Failed marks a message refused for good.
	Failed
)

// Message is one message of a conversation.
type Message struct {
	// ID is the sender-chosen, unique id.
	ID MessageID
	// Conversation is the message's conversation.
	Conversation ConversationID
	// Sender is the sender's username.
	Sender string
	// SenderDevice is the sender's device key.
	SenderDevice [32]byte
	// Body is what the message carries.
	Body Body
	// SentAt is the sender's clock when it sent the message.
	SentAt time.Time
	// ReceivedAt is the local order key (strictly increasing within one store).
	ReceivedAt time.Time
	// Outgoing is true when this account sent the message.
	Outgoing bool
	// Delivery is where an outgoing message is; Received for incoming ones.
	Delivery Delivery
}

// Text is the message's text for a Text body, "" otherwise.
func (m Message) Text() string {
	t, _ := m.Body.(Text)
	return string(t)
}

// Member is a member of a conversation, or a resolved user.
type Member struct {
	// Username is the member's username.
	Username string
	// IdentityKey is the account identity key; nil while this device does not know it.
	IdentityKey *[32]byte
	// Devices are the member's device keys.
	Devices [][32]byte
}

// Body is what a message carries: one of Text, App, Reply, Reaction, Edit, Delete and File.
// Text and App can be sent today; the others are reserved (sending them gives
// ErrInvalidInput) but are delivered when received.
type Body interface{ isBody() }

// Text is a UTF-8 text body.
type Text string

// App is an application's own payload, binary-safe.
type App struct {
	// ContentType says what Data is (1 to 255 bytes, not interpreted).
	ContentType string
	// Data is the payload.
	Data []byte
}

// Reply quotes another message (reserved).
type Reply struct {
	// To is the message replied to.
	To MessageID
	// Text is the reply.
	Text string
}

// Reaction reacts to another message (reserved).
type Reaction struct {
	// To is the message reacted to.
	To MessageID
	// Emoji is the reaction.
	Emoji string
	// Remove is true when the reaction is taken back.
	Remove bool
}

// Edit gives an earlier message of the same sender a new text (reserved).
type Edit struct {
	// Of is the message edited.
	Of MessageID
	// Text is its new text.
	Text string
}

// Delete deletes an earlier message of the same sender (reserved).
type Delete struct {
	// Of is the message deleted.
	Of MessageID
}

// File refers to a file stored elsewhere, encrypted under Key (reserved).
type File struct {
	// Name is the file's name.
	Name string
	// MimeType is the file's MIME type.
	MimeType string
	// Size is the file's size in bytes.
	Size uint64
	// SHA256 is the hash of the encrypted file.
	SHA256 []byte
	// Key is the file's encryption key.
	Key []byte
}

func (Text) isBody()     {}
func (App) isBody()      {}
func (Reply) isBody()    {}
func (Reaction) isBody() {}
func (Edit) isBody()     {}
func (Delete) isBody()   {}
func (File) isBody()     {}

// Event is something that happened: one of MessageReceived, ConversationJoined,
// MembersChanged, Removed, ConnectionChanged, MessageSent, MessageFailed, ConversationBroken
// and ConversationRecovered. Use a type switch.
type Event interface{ isEvent() }

// MessageReceived is a new message (incoming, or sent from another device of this account).
type MessageReceived struct {
	// Message is the message.
	Message Message
}

// ConversationJoined says this account was added to a conversation.
type ConversationJoined struct {
	// Conversation is the conversation joined.
	Conversation Conversation
}

// MembersChanged says members joined, were removed from, or left a conversation (one
// commit's changes).
type MembersChanged struct {
	// Conversation is the conversation.
	Conversation ConversationID
	// By is the member who committed the change (who added, or removed others); "" when this
	// device does not know that member's username.
	By string
	// Added are the usernames added.
	Added []string
	// Removed are the usernames removed by someone else.
	Removed []string
	// Left are the usernames that left on their own.
	Left []string
	// Epoch is the MLS epoch after the change.
	Epoch uint64
}

// Removed says this account is no longer in a conversation: removed by another member, or it
// left (from this or another of its devices). The conversation and its history stay, inactive.
type Removed struct {
	// Conversation is the conversation.
	Conversation ConversationID
	// By is who removed this account (its own username when it left); "" when unknown.
	By string
	// Left is true when this account left on its own rather than being removed.
	Left bool
}

// ConversationBroken says this device cannot process a commit of a conversation, so it
// would follow it no further. The engine rejoins by itself and then reports
// ConversationRecovered; messages sent in between may never reach this device.
type ConversationBroken struct {
	// Conversation is the conversation.
	Conversation ConversationID
	// Reason is what could not be processed, for humans.
	Reason string
}

// ConversationRecovered says a conversation reported broken works again.
type ConversationRecovered struct {
	// Conversation is the conversation.
	Conversation ConversationID
}

// ConnectionChanged says the connection to the server went up or down.
type ConnectionChanged struct {
	// Connected is true when connected.
	Connected bool
}

// MessageSent says the server accepted a message this device sent, for every member.
type MessageSent struct {
	// Conversation is the message's conversation.
	Conversation ConversationID
	// ID is the id Send returned.
	ID MessageID
}

// MessageFailed says a message this device queued can never be sent.
type MessageFailed struct {
	// Conversation is the message's conversation.
	Conversation ConversationID
	// ID is the id Send returned.
	ID MessageID
	// Err says why.
	Err *Error
}

func (MessageReceived) isEvent()       {}
func (ConversationJoined) isEvent()    {}
func (MembersChanged) isEvent()        {}
func (Removed) isEvent()               {}
func (ConnectionChanged) isEvent()     {}
func (MessageSent) isEvent()           {}
func (MessageFailed) isEvent()         {}
func (ConversationBroken) isEvent()    {}
func (ConversationRecovered) isEvent() {}
