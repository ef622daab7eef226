package qpq_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/quicproquo/quicproquo/sdks/go/qpq"
)

// TestConsentBlockAndLeave: a stranger's invitation arrives Requested and Accept allows it; a
// leave shows as Removed{Left} to the leaver and in MembersChanged.Left (with By) to the
// other; a block refuses the blocker's invitations until Unblock; Decline with block denies the
// conversation and blocks the inviter. Against the real server.
func TestConsentBlockAndLeave(t *testing.T) {
	ctx := context.Background()
	aliceName, bobName := "consent-alice", "consent-bob"
	alice, bob := user(t, aliceName), user(t, bobName)
	a, b := &recorder{c: alice}, &recorder{c: bob}

	g, err := alice.CreateGroup(ctx, "consent", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.Invite(ctx, g, bobName); err != nil {
		t.Fatal(err)
	}
	j := b.waitFor(t, "bob joins", joined(g)).(qpq.ConversationJoined).Conversation
	if j.Consent != qpq.ConsentRequested || j.InvitedBy != aliceName {
		t.Fatalf("a stranger's invitation: consent %v, invited by %q", j.Consent, j.InvitedBy)
	}
	if own, err := alice.Conversation(g); err != nil || own.Consent != qpq.ConsentAllowed || own.InvitedBy != "" {
		t.Fatalf("the creator's conversation: %+v %v", own, err)
	}
	if err := bob.Accept(ctx, g); err != nil {
		t.Fatal(err)
	}
	if c, err := bob.Conversation(g); err != nil || c.Consent != qpq.ConsentAllowed {
		t.Fatalf("after Accept: %v %v", c.Consent, err)
	}
	if err := bob.Accept(ctx, qpq.ConversationID{1}); !errors.Is(err, qpq.ErrNotFound) {
		t.Fatalf("Accept of an unknown conversation: %v", err)
	}

	// bob leaves: he is told he left; alice commits his proposal and sees him in Left.
	if err := bob.Leave(ctx, g); err != nil {
		t.Fatal(err)
	}
	r := b.waitFor(t, "bob's own leave", func(e qpq.Event) bool {
		r, ok := e.(qpq.Removed)
		return ok && r.Conversation == g
	}).(qpq.Removed)
	if !r.Left || r.By != bobName {
		t.Fatalf("bob's Removed: %+v", r)
	}
	m := a.waitFor(t, "bob left, at alice", func(e qpq.Event) bool {
		m, ok := e.(qpq.MembersChanged)
		return ok && m.Conversation == g && slices.Contains(m.Left, bobName)
	}).(qpq.MembersChanged)
	if m.By != aliceName || len(m.Removed) != 0 || len(m.Added) != 0 {
		t.Fatalf("alice's MembersChanged: %+v", m)
	}

	// bob blocks alice: her invitation is refused until he unblocks her.
	if err := bob.Block(ctx, "consent-nobody"); !errors.Is(err, qpq.ErrNotFound) {
		t.Fatalf("Block of an unknown user: %v", err)
	}
	if err := bob.Block(ctx, aliceName); err != nil {
		t.Fatal(err)
	}
	if names, err := bob.Blocked(ctx); err != nil || !slices.Equal(names, []string{aliceName}) {
		t.Fatalf("Blocked: %v %v", names, err)
	}
	g2, err := alice.CreateGroup(ctx, "consent 2", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.Invite(ctx, g2, bobName); !errors.Is(err, qpq.ErrForbidden) {
		t.Fatalf("inviting a blocker: %v", err)
	}
	if err := bob.Unblock(ctx, aliceName); err != nil {
		t.Fatal(err)
	}
	if names, err := bob.Blocked(ctx); err != nil || len(names) != 0 {
		t.Fatalf("Blocked after Unblock: %v %v", names, err)
	}

	// Now the invitation goes through; bob declines it and blocks alice in the same call.
	if err := alice.Invite(ctx, g2, bobName); err != nil {
		t.Fatal(err)
	}
	b.waitFor(t, "bob joins the second group", joined(g2))
	if err := bob.Decline(ctx, g2, true); err != nil {
		t.Fatal(err)
	}
	if c, err := bob.Conversation(g2); err != nil || c.Consent != qpq.ConsentDenied || c.Active {
		t.Fatalf("after Decline: %+v %v", c, err)
	}
	if names, err := bob.Blocked(ctx); err != nil || !slices.Equal(names, []string{aliceName}) {
		t.Fatalf("Blocked after Decline(block): %v %v", names, err)
	}
	if got := qpq.ConsentRequested.String(); got != "requested" {
		t.Fatalf("ConsentRequested.String() = %q", got)
	}
}
