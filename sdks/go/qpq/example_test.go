package qpq_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/quicproquo/quicproquo/sdks/go/qpq"
)

// Two accounts chat in a post-quantum group.
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "qpq-example-")
	defer os.RemoveAll(dir)
	open := func(name string) *qpq.Client {
		c, err := qpq.Open(ctx, qpq.Config{
			DataDir:        filepath.Join(dir, name),
			ServerAddr:     server.addr, // "host:port" of a qpq-server
			PinnedCertFile: server.cert, // its certificate (DER)
			Passphrase:     "the store passphrase of " + name,
		})
		if err != nil {
			panic(err)
		}
		if _, err := c.Register(ctx, "example-"+name, "password of "+name); err != nil {
			panic(err)
		}
		return c
	}
	alice, bob := open("alice"), open("bob")
	defer alice.Close()
	defer bob.Close()

	group, _ := alice.CreateGroup(ctx, "example", true)
	_ = alice.Invite(ctx, group, "example-bob")
	_, _ = alice.SendText(ctx, group, "hello, bob")

	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for ev := range bob.Events(wait) {
		switch e := ev.(type) {
		case qpq.ConversationJoined:
			fmt.Println("joined", e.Conversation.Name, "post-quantum:", e.Conversation.PostQuantum)
		case qpq.MessageReceived:
			fmt.Printf("%s: %s\n", e.Message.Sender, e.Message.Text())
			cancel()
		}
	}

	err := alice.Invite(ctx, group, "nobody-such-user")
	var qerr *qpq.Error
	fmt.Println(errors.Is(err, qpq.ErrNotFound), errors.As(err, &qerr) && qerr.Code == qpq.CodeNotFound)
	// Output:
	// joined example post-quantum: true
	// example-alice: hello, bob
	// true true
}
