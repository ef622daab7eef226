package org.quicproquo

import java.io.File
import java.nio.file.Files
import java.util.concurrent.ConcurrentHashMap
import kotlin.test.assertEquals
import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.flow.takeWhile
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlinx.coroutines.withTimeoutOrNull
import org.junit.jupiter.api.Tag
import org.junit.jupiter.api.Test
import org.quicproquo.ffi.Body
import org.quicproquo.ffi.ClientConfig
import org.quicproquo.ffi.Event
import org.quicproquo.ffi.StoreKey
import org.quicproquo.ffi.Trust

/**
 * B1 (SCENARIO.md, after the story): a benchmark, not a test (tag `bench`, excluded from
 * `mvn test`; run it with `mvn -q test -Dgroups=bench -Dqpq.excluded.groups=none`). In a
 * post-quantum group of three, alice sends N texts back to back; bob's `events()` flow receives
 * them. Reports messages per second (N over first send to last arrival) and the p50 latency
 * (send call to the event at bob), first from Rust (`bindings/uniffi/examples/b1_uniffi.rs`, run as a
 * child process against the same server) and then through this SDK, and their ratio. It
 * asserts only that every message arrived.
 */
@Tag("bench")
class B1Bench {
    private val n = System.getProperty("qpq.b1.n")?.toInt() ?: 1000

    @Test
    fun b1() = TestServer().use { server ->
        val rustBin = System.getProperty("qpq.b1.rust") ?: error("qpq.b1.rust is not set")
        val rust = ProcessBuilder(rustBin, server.addr, server.certFile.path, n.toString())
            .redirectError(ProcessBuilder.Redirect.INHERIT).start()
        val rustLine = rust.inputStream.bufferedReader().readLines().single { it.startsWith("b1 rust") }
        check(rust.waitFor() == 0) { "the Rust run failed" }
        val (rustRate, rustP50) = Regex("msgs_per_sec=(\\d+) p50_us=(\\d+)").find(rustLine)!!.destructured
        val (rate, p50) = runBlocking { kotlinRun(server) }
        println(rustLine)
        println("b1 kotlin msgs_per_sec=%.0f p50_us=%d".format(rate, p50))
        println("b1 ratio kotlin/rust: throughput %.2f, p50 latency %.2f".format(
            rate / rustRate.toDouble(), p50.toDouble() / rustP50.toDouble()))
    }

    private suspend fun kotlinRun(server: TestServer): Pair<Double, Long> {
        val base = Files.createTempDirectory("qpq-b1-kotlin").toFile()
        val tag = "k${ProcessHandle.current().pid() % 100_000}"
        val names = listOf("alice", "bob", "carol").map { tag + it }
        val clients = names.map { name ->
            QpqClient.open(ClientConfig(
                dataDir = File(base, name).path, storeKey = StoreKey.Passphrase("b1"),
                serverAddr = server.addr, trust = Trust.PinnedCertFile(server.certFile.path), insecureFastKdf = true,
            )).also { it.register(name, "b1 password of the kotlin run") }
        }
        try {
            val (alice, bob) = clients
            val joined = bob.eventCursor
            val group = alice.createGroup("b1", postQuantum = true)
            alice.invite(group, names.drop(1))
            val from = withTimeout(10.seconds) {
                bob.eventRecords(after = joined.toLong())
                    .first { it.event is Event.ConversationJoined }.cursor.toLong()
            }
            val got = ConcurrentHashMap<String, Long>()
            return kotlinx.coroutines.coroutineScope {
                val receiver = async(Dispatchers.IO) {
                    withTimeoutOrNull(300.seconds) {
                        bob.events(after = from).takeWhile { e ->
                            val text = ((e as? Event.Message)?.message?.body as? Body.Text)?.text
                            if (text != null) got[text] = System.nanoTime()
                            got.size < n
                        }.collect {}
                    } ?: throw AssertionError("bob got ${got.size} of $n messages within 300 s")
                }
                // The receiver reads bob's event log from `from` on, so it misses nothing even if
                // it starts after the first sends.
                val sent = ArrayList<Pair<String, Long>>(n)
                val start = System.nanoTime()
                for (i in 0 until n) {
                    val text = "b1 $i"
                    sent += text to System.nanoTime()
                    alice.sendText(group, text)
                }
                receiver.await()
                assertEquals(n, got.size, "every message arrived at bob")
                val last = got.values.max()
                val lat = sent.map { (t, at) -> (got.getValue(t) - at) / 1000 }.sorted()
                n / ((last - start) / 1e9) to lat[lat.size / 2]
            }
        } finally {
            clients.forEach { it.close() }
            base.deleteRecursively()
        }
    }
}
