package qpq_test

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/quicproquo/quicproquo/sdks/go/qpq"
)

// sentinels names every exported sentinel by its code's name.
var sentinels = map[string]error{
	"Network": qpq.ErrNetwork, "Unauthorized": qpq.ErrUnauthorized, "NotFound": qpq.ErrNotFound,
	"Conflict": qpq.ErrConflict, "InvalidInput": qpq.ErrInvalidInput, "Crypto": qpq.ErrCrypto,
	"Storage": qpq.ErrStorage, "RateLimited": qpq.ErrRateLimited, "Timeout": qpq.ErrTimeout,
	"Closed": qpq.ErrClosed, "Internal": qpq.ErrInternal, "Cancelled": qpq.ErrCancelled,
	"Busy": qpq.ErrBusy, "Forbidden": qpq.ErrForbidden, "AlreadyMember": qpq.ErrAlreadyMember,
}

// TestEveryPinnedCodeHasASentinel reads core/client/errors.toml: each code has its Go name
// and a sentinel that matches an *Error with that code and no other.
func TestEveryPinnedCodeHasASentinel(t *testing.T) {
	text, err := os.ReadFile("../../../core/client/errors.toml")
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		number uint32
		name   string
	}
	var rows []row
	for _, line := range strings.Split(string(text), "\n") {
		line = strings.TrimSpace(line)
		if line == "[[code]]" {
			rows = append(rows, row{})
			continue
		}
		key, value, ok := strings.Cut(line, " = ")
		if !ok || len(rows) == 0 {
			continue
		}
		switch key {
		case "number":
			n, err := strconv.ParseUint(value, 10, 32)
			if err != nil {
				t.Fatalf("number %q", value)
			}
			rows[len(rows)-1].number = uint32(n)
		case "name":
			rows[len(rows)-1].name = strings.Trim(value, `"`)
		}
	}
	if len(rows) != len(sentinels) {
		t.Fatalf("errors.toml has %d codes, the Go SDK %d sentinels", len(rows), len(sentinels))
	}
	for _, r := range rows {
		code := qpq.Code(r.number)
		if code.String() != r.name {
			t.Errorf("code %d is %q in Go, %q in errors.toml", r.number, code.String(), r.name)
		}
		s, ok := sentinels[r.name]
		if !ok {
			t.Errorf("no sentinel for %s", r.name)
			continue
		}
		e := error(&qpq.Error{Code: code, Message: "m"})
		if !errors.Is(e, s) {
			t.Errorf("errors.Is(*Error{%s}, Err%s) is false", r.name, r.name)
		}
		for other, os := range sentinels {
			if other != r.name && errors.Is(e, os) {
				t.Errorf("*Error{%s} matches Err%s", r.name, other)
			}
		}
	}
}

// TestIDsRoundTripThroughHex: String and Parse agree; malformed text is ErrInvalidInput.
func TestIDsRoundTripThroughHex(t *testing.T) {
	id := qpq.ConversationID{0xab, 1, 2, 0xff}
	back, err := qpq.ParseConversationID(strings.ToUpper(id.String()))
	if err != nil || back != id || len(id.String()) != 32 {
		t.Fatalf("%s -> %v %v", id, back, err)
	}
	for _, bad := range []string{"", "abcd", id.String() + "00", "zz" + id.String()[2:]} {
		if _, err := qpq.ParseMessageID(bad); !errors.Is(err, qpq.ErrInvalidInput) {
			t.Errorf("ParseMessageID(%q): %v", bad, err)
		}
	}
}
