package qpq_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/quicproquo/quicproquo/sdks/go/qpq"
)

// TestOneClientSixteenGoroutines uses one *Client from 16 goroutines at once (sends, reads,
// event waits that interrupt each other, pings); run with -race. Every message arrives.
func TestOneClientSixteenGoroutines(t *testing.T) {
	ctx := context.Background()
	sender, peer := user(t, "race-sender"), user(t, "race-peer")
	group, err := sender.CreateGroup(ctx, "race", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := sender.Invite(ctx, group, "race-peer"); err != nil {
		t.Fatal(err)
	}
	p := &recorder{c: peer}
	p.waitFor(t, "join", joined(group))
	const workers, each = 16, 5
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				switch w % 4 {
				case 0, 1:
					if _, err := sender.SendText(ctx, group, fmt.Sprintf("w%d-%d", w, i)); err != nil {
						errs <- err
					}
				case 2:
					if _, err := sender.Messages(group, 10, time.Time{}); err != nil {
						errs <- err
					}
					if _, err := sender.Members(group); err != nil {
						errs <- err
					}
				case 3:
					short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
					_, _ = sender.NextEvent(short)
					cancel()
					if _, err := sender.Ping(ctx); err != nil {
						errs <- err
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got := map[string]bool{}
	p.waitFor(t, "every message", func(e qpq.Event) bool {
		if m, ok := e.(qpq.MessageReceived); ok {
			got[m.Message.Text()] = true
		}
		return len(got) == workers/2*each
	})
}
