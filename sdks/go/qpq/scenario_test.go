package qpq_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quicproquo/quicproquo/sdks/go/qpq"
)

// TestScenario is SCENARIO.md, every step, against the real server.
func TestScenario(t *testing.T) {
	ctx := context.Background()
	// 1. Three clients on empty stores; alice's store has a real passphrase.
	aliceCfg := config(t.TempDir())
	aliceCfg.RawKey, aliceCfg.Passphrase = nil, "alice's store passphrase"
	carolCfg := config(t.TempDir())
	alice, bob := open(t, aliceCfg), open(t, config(t.TempDir()))
	carol := open(t, carolCfg)
	a, b, c := &recorder{c: alice}, &recorder{c: bob}, &recorder{c: carol}

	// 2. Register all three.
	for name, cl := range map[string]*qpq.Client{"alice": alice, "bob": bob, "carol": carol} {
		if _, err := cl.Register(ctx, name, "password of "+name); err != nil {
			t.Fatalf("register %s: %v", name, err)
		}
		acc, ok, err := cl.Account()
		if err != nil || !ok || acc.Username != name || acc.IdentityKey == [32]byte{} || acc.DeviceKey == [32]byte{} {
			t.Fatalf("account of %s: %+v %v %v", name, acc, ok, err)
		}
	}

	// 3. A wrong password on a fresh store: typed Unauthorized, nothing created.
	fourth := open(t, config(t.TempDir()))
	_, err := fourth.Login(ctx, "alice", "not alice's password")
	var qerr *qpq.Error
	if !errors.Is(err, qpq.ErrUnauthorized) || !errors.As(err, &qerr) || qerr.Code != qpq.CodeUnauthorized {
		t.Fatalf("wrong password: %v", err)
	}
	if _, ok, _ := fourth.Account(); ok {
		t.Fatal("a failed login created an account")
	}

	// 4. A post-quantum group, bob and carol invited in one call.
	group, err := alice.CreateGroup(ctx, "scenario", true)
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.Invite(ctx, group, "bob", "carol"); err != nil {
		t.Fatal(err)
	}
	conv, err := alice.Conversation(group)
	if err != nil || !conv.PostQuantum || !strings.Contains(conv.Ciphersuite, "MLKEM768X25519") {
		t.Fatalf("conversation: %+v %v", conv, err)
	}
	b.waitFor(t, "bob joins", joined(group))
	c.waitFor(t, "carol joins", joined(group))

	// 5. The same three members everywhere, sorted.
	want := []string{"alice", "bob", "carol"}
	for _, cl := range []*qpq.Client{alice, bob, carol} {
		ms, err := cl.Members(group)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, m := range ms {
			names = append(names, m.Username)
		}
		if !slices.Equal(names, want) {
			t.Fatalf("members: %v", names)
		}
	}

	// 6. Non-ASCII text from alice reaches bob and carol once, incoming; alice's copy is outgoing.
	hello := "hello from alice ✓"
	if _, err := alice.SendText(ctx, group, hello); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*recorder{b, c} {
		m := r.waitFor(t, hello, textIs(group, hello)).(qpq.MessageReceived).Message
		if m.Sender != "alice" || m.Outgoing {
			t.Fatalf("received %+v", m)
		}
	}
	history, err := alice.Messages(group, 50, time.Time{})
	if err != nil || len(history) != 1 || history[0].Text() != hello || !history[0].Outgoing {
		t.Fatalf("alice's history: %+v %v", history, err)
	}

	// 7. bob's reply reaches alice and carol.
	if _, err := bob.SendText(ctx, group, "hi from bob"); err != nil {
		t.Fatal(err)
	}
	a.waitFor(t, "hi from bob at alice", textIs(group, "hi from bob"))
	c.waitFor(t, "hi from bob at carol", textIs(group, "hi from bob"))

	// 8. carol away: the message waits for her; her history survives the reopen.
	carol.Close()
	if _, err := alice.SendText(ctx, group, "while you were away"); err != nil {
		t.Fatal(err)
	}
	carol = open(t, carolCfg)
	c = &recorder{c: carol, log: c.log}
	c.waitFor(t, "while you were away", textIs(group, "while you were away"))
	history, err = carol.Messages(group, 50, time.Time{})
	if err != nil || len(history) != 3 || history[0].Text() != hello || history[1].Text() != "hi from bob" {
		t.Fatalf("carol's history: %+v %v", history, err)
	}

	// 9. alice removes carol.
	if err := alice.Remove(ctx, group, "carol"); err != nil {
		t.Fatal(err)
	}
	c.waitFor(t, "carol removed", func(e qpq.Event) bool { r, ok := e.(qpq.Removed); return ok && r.Conversation == group })
	b.waitFor(t, "carol's removal at bob", func(e qpq.Event) bool {
		m, ok := e.(qpq.MembersChanged)
		return ok && m.Conversation == group && slices.Contains(m.Removed, "carol")
	})

	// 10. After the removal carol gets nothing.
	if _, err := alice.SendText(ctx, group, "after removal"); err != nil {
		t.Fatal(err)
	}
	b.waitFor(t, "after removal", textIs(group, "after removal"))
	quiet, cancel := context.WithTimeout(ctx, 2*time.Second)
	for {
		ev, err := carol.NextEvent(quiet)
		if err != nil {
			break
		}
		if _, ok := ev.(qpq.MessageReceived); ok {
			t.Fatalf("carol got a message after her removal: %+v", ev)
		}
	}
	cancel()

	// 11. bob rotates his keys; the epoch moves on at both.
	before, _ := bob.Conversation(group)
	if err := bob.RotateKeys(ctx, group); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.SendText(ctx, group, "after rotation"); err != nil {
		t.Fatal(err)
	}
	b.waitFor(t, "after rotation", textIs(group, "after rotation"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		ea, _ := alice.Conversation(group)
		eb, _ := bob.Conversation(group)
		if ea.Epoch == eb.Epoch && eb.Epoch > before.Epoch {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("epochs: alice %d, bob %d, before %d", ea.Epoch, eb.Epoch, before.Epoch)
		}
		a.waitFor(t, "alice processes bob's commit", func(qpq.Event) bool { return true })
	}

	// 12. Safety numbers agree.
	sa, err1 := alice.SafetyNumber(ctx, "bob")
	sb, err2 := bob.SafetyNumber(ctx, "alice")
	if err1 != nil || err2 != nil || sa != sb || sa == "" {
		t.Fatalf("safety numbers %q %q %v %v", sa, sb, err1, err2)
	}

	// 13. Unknown user and unknown conversation: NotFound, and alice keeps working.
	if err := alice.Invite(ctx, group, "nobody-such-user"); !errors.Is(err, qpq.ErrNotFound) {
		t.Fatalf("invite of an unknown user: %v", err)
	}
	if _, err := alice.SendText(ctx, qpq.ConversationID{1, 2, 3}, "to nowhere"); !errors.Is(err, qpq.ErrNotFound) {
		t.Fatalf("send to an unknown conversation: %v", err)
	}
	if _, err := alice.SendText(ctx, group, "still here"); err != nil {
		t.Fatal(err)
	}
	b.waitFor(t, "still here", textIs(group, "still here"))

	// 14. A 200 ms pull with nothing pending says "no event" after about 200 ms.
	b.drain()
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	start := time.Now()
	_, err = bob.NextEvent(short)
	cancel()
	if took := time.Since(start); !errors.Is(err, context.DeadlineExceeded) || took < 150*time.Millisecond || took > 2*time.Second {
		t.Fatalf("200 ms pull: %v after %v", err, took)
	}

	// 15. Cancelling a blocked wait from another goroutine returns promptly; bob still works.
	wait, cancelWait := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { _, err := bob.NextEvent(wait); done <- err }()
	time.Sleep(100 * time.Millisecond) // let the wait block (it is what is being cancelled)
	start = time.Now()
	cancelWait()
	if err := <-done; !errors.Is(err, context.Canceled) || time.Since(start) > time.Second {
		t.Fatalf("cancelled wait: %v after %v", err, time.Since(start))
	}
	if _, err := bob.Conversations(); err != nil {
		t.Fatal(err)
	}

	// Every message event came exactly once; each join too.
	for _, r := range []*recorder{a, b, c} {
		for _, text := range []string{hello, "hi from bob", "while you were away", "after removal", "after rotation"} {
			if n := r.count(textIs(group, text)); n > 1 {
				t.Fatalf("%q came %d times", text, n)
			}
		}
	}
	if b.count(joined(group)) != 1 || c.count(joined(group)) != 1 {
		t.Fatal("a join event came more than once")
	}

	// 16. Close twice, then a call: typed Closed, no crash.
	for _, cl := range []*qpq.Client{alice, bob, carol, fourth} {
		cl.Close()
		cl.Close()
	}
	if _, err := alice.SendText(ctx, group, "closed"); !errors.Is(err, qpq.ErrClosed) {
		t.Fatalf("send after close: %v", err)
	}
	if _, err := bob.NextEvent(ctx); !errors.Is(err, qpq.ErrClosed) {
		t.Fatalf("wait after close: %v", err)
	}
}
