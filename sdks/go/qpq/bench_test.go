package qpq_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quicproquo/quicproquo/sdks/go/qpq"
)

type b1Result struct {
	Messages  int     `json:"messages"`
	MsgsPerS  float64 `json:"msgs_per_s"`
	P50Micros float64 `json:"p50_us"`
}

// b1Go is SCENARIO.md's B1 through this SDK: alice, bob and carol in a post-quantum group;
// alice sends n texts, each once the previous one reached bob.
func b1Go(b *testing.B, prefix string, n int) b1Result {
	ctx := context.Background()
	alice, bob := user(b, prefix+"alice"), user(b, prefix+"bob")
	user(b, prefix+"carol")
	group, err := alice.CreateGroup(ctx, "b1", true)
	if err != nil {
		b.Fatal(err)
	}
	if err := alice.Invite(ctx, group, prefix+"bob", prefix+"carol"); err != nil {
		b.Fatal(err)
	}
	r := &recorder{c: bob}
	r.waitFor(b, "join", joined(group))
	lat := make([]time.Duration, 0, n)
	start := time.Now()
	for i := range n {
		text := "b1 " + strconv.Itoa(i)
		t := time.Now()
		if _, err := alice.SendText(ctx, group, text); err != nil {
			b.Fatal(err)
		}
		r.waitFor(b, text, textIs(group, text))
		lat = append(lat, time.Since(t))
		r.log = r.log[:0]
	}
	total := time.Since(start)
	slices.Sort(lat)
	return b1Result{n, float64(n) / total.Seconds(), float64(lat[n/2].Microseconds())}
}

// b1Rust runs the same through qpq-core directly (target/debug/examples/b1) against the same
// server, in the same run.
func b1Rust(b *testing.B, prefix string, n int) b1Result {
	repo, _ := filepath.Abs("../../..")
	target := os.Getenv("CARGO_TARGET_DIR")
	if target == "" {
		target = filepath.Join(repo, "target")
	}
	out, err := exec.Command(filepath.Join(target, "debug", "examples", "b1"), server.addr, server.cert, prefix, strconv.Itoa(n)).Output()
	if err != nil {
		b.Fatalf("the Rust B1 (cargo build -p qpq-ffi --example b1): %v", err)
	}
	var r b1Result
	if err := json.Unmarshal(out, &r); err != nil {
		b.Fatalf("%q: %v", out, err)
	}
	return r
}

// BenchmarkB1 measures B1 in Go and in Rust, interleaved, and reports both and their ratios.
// Run it with -benchtime=1x (sdks/go/bench.sh); QPQ_B1_MESSAGES changes the count (1,000),
// QPQ_B1_WRITE=1 writes the row into docs/BENCHMARKS.md.
func BenchmarkB1(b *testing.B) {
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("QPQ_B1_MESSAGES")); err == nil && v > 0 {
		n = v
	}
	var g, r b1Result
	for i := range b.N {
		stamp := strconv.FormatInt(time.Now().UnixNano(), 36)
		r = b1Rust(b, fmt.Sprintf("rs%d%s-", i, stamp), n)
		g = b1Go(b, fmt.Sprintf("go%d%s-", i, stamp), n)
	}
	b.ReportMetric(g.MsgsPerS, "go-msgs/s")
	b.ReportMetric(g.P50Micros, "go-p50-µs")
	b.ReportMetric(r.MsgsPerS, "rust-msgs/s")
	b.ReportMetric(r.P50Micros, "rust-p50-µs")
	b.ReportMetric(g.MsgsPerS/r.MsgsPerS, "throughput-ratio")
	b.ReportMetric(g.P50Micros/r.P50Micros, "p50-ratio")
	if os.Getenv("QPQ_B1_WRITE") == "1" {
		writeRow(b, g, r)
	}
}

const sdkMarker = "<!-- SDK benchmarks: written by each SDK's B1 benchmark, kept by qpq-bench -->"

// writeRow puts the Go row of the SDK section of docs/BENCHMARKS.md in place.
func writeRow(b *testing.B, g, r b1Result) {
	path := "../../../docs/BENCHMARKS.md"
	text, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	doc := string(text)
	if !strings.Contains(doc, sdkMarker) {
		doc += "\n" + sdkMarker + "\n\n## B1 through the SDKs\n\n" +
			"SCENARIO.md's B1: alice sends 1,000 texts in the post-quantum group of alice, bob and carol, each once the previous one reached bob; " +
			"throughput and p50 of send → event at bob. The Rust figure is qpq-core called directly (`ffi/examples/b1.rs`), measured against the same server in the same run; " +
			"ratios are SDK ÷ Rust (throughput: higher is better; p50: lower is better). Debug builds of the engine on both sides, as the SDK suites build it.\n\n" +
			"| SDK | messages | SDK msgs/s | Rust msgs/s | throughput ratio | SDK p50 | Rust p50 | p50 ratio | measured |\n|---|---|---|---|---|---|---|---|---|\n"
	}
	row := fmt.Sprintf("| Go (cgo, libqpq.a) | %d | %.2f | %.2f | %.2f× | %.0f µs | %.0f µs | %.2f× | %s, %s/%s, %d CPUs |",
		g.Messages, g.MsgsPerS, r.MsgsPerS, g.MsgsPerS/r.MsgsPerS, g.P50Micros, r.P50Micros, g.P50Micros/r.P50Micros,
		time.Now().UTC().Format("2006-01-02"), runtime.GOOS, runtime.GOARCH, runtime.NumCPU())
	lines := strings.Split(strings.TrimRight(doc, "\n"), "\n")
	replaced := false
	for i, l := range lines {
		if strings.HasPrefix(l, "| Go (cgo") {
			lines[i], replaced = row, true
		}
	}
	if !replaced {
		lines = append(lines, row)
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		b.Fatal(err)
	}
}

var _ = qpq.ErrClosed
