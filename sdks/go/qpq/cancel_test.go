package qpq_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/quicproquo/quicproquo/sdks/go/qpq"
)

// TestCancellingOneWaitLeavesAnotherWaiting: the interrupt behind one context's cancellation
// wakes every wait of the client, but a wait whose context is live keeps waiting and gets
// the next event.
func TestCancellingOneWaitLeavesAnotherWaiting(t *testing.T) {
	ctx := context.Background()
	sender, c := user(t, "cancel-sender"), user(t, "cancel-waiter")
	group, err := sender.CreateGroup(ctx, "cancel", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := sender.Invite(ctx, group, "cancel-waiter"); err != nil {
		t.Fatal(err)
	}
	(&recorder{c: c}).waitFor(t, "join", joined(group))

	live, stopLive := context.WithTimeout(ctx, 10*time.Second)
	defer stopLive()
	got := make(chan qpq.Event, 1)
	go func() {
		for {
			ev, err := c.NextEvent(live)
			if err != nil {
				close(got)
				return
			}
			if m, ok := ev.(qpq.MessageReceived); ok && m.Message.Text() == "wake" {
				got <- ev
				return
			}
		}
	}()
	cancelled, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { _, err := c.NextEvent(cancelled); done <- err }()
	time.Sleep(100 * time.Millisecond) // both waits are blocked now: that is what is tested
	start := time.Now()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) || time.Since(start) > time.Second {
		t.Fatalf("cancelled wait: %v after %v", err, time.Since(start))
	}
	if _, err := sender.SendText(ctx, group, "wake"); err != nil {
		t.Fatal(err)
	}
	if ev, ok := <-got; !ok || ev == nil {
		t.Fatal("the live wait ended without the message")
	}
}

// TestCloseEndsABlockedWaitAndEvents: Close from another goroutine ends a blocked NextEvent
// with ErrClosed and closes an Events channel; calls after it fail with ErrClosed.
func TestCloseEndsABlockedWaitAndEvents(t *testing.T) {
	c := user(t, "close-waiter")
	events := c.Events(context.Background())
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := c.NextEvent(context.Background()); err != nil {
				done <- err
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond) // the wait is blocked now
	start := time.Now()
	c.Close()
	if err := <-done; !errors.Is(err, qpq.ErrClosed) || time.Since(start) > 2*time.Second {
		t.Fatalf("wait after close: %v after %v", err, time.Since(start))
	}
	for range events { // drains what came before, then ends
	}
	if _, err := c.Conversations(); !errors.Is(err, qpq.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if _, err := c.Ping(context.Background()); !errors.Is(err, qpq.ErrClosed) {
		t.Fatalf("ping after close: %v", err)
	}
}

// TestDoneContextStopsACallBeforeItStarts: a call given a context already done returns its
// error without touching the client.
func TestDoneContextStopsACallBeforeItStarts(t *testing.T) {
	c := open(t, config(t.TempDir()))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Register(ctx, "never-registered", "pw"); !errors.Is(err, context.Canceled) {
		t.Fatalf("register with a done context: %v", err)
	}
	if _, ok, _ := c.Account(); ok {
		t.Fatal("the call ran")
	}
}
