package org.quicproquo

import java.io.File
import java.nio.file.Files
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import kotlin.test.assertEquals
import kotlin.test.assertNotNull
import kotlin.test.assertNull
import kotlin.test.assertTrue
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Test
import org.quicproquo.ffi.Body
import org.quicproquo.ffi.ClientConfig
import org.quicproquo.ffi.Event
import org.quicproquo.ffi.StoreKey
import org.quicproquo.ffi.Trust

/**
 * The foreign listener path (UniFFI `with_foreign` trait): a Kotlin listener receives events
 * on an engine thread; one that throws does not stop deliveries (the error becomes `Internal`
 * through `From<UnexpectedUniFFICallbackError>`, is logged, and the next event comes); closing
 * the subscription stops deliveries.
 */
class ListenerTest {
    @Test
    fun listenersReceiveSurviveThrowingAndStopWhenClosed(): Unit = TestServer().use { server ->
        val base = Files.createTempDirectory("qpq-kotlin-listener").toFile()
        fun open(name: String) = QpqClient.openBlocking(ClientConfig(
            dataDir = File(base, name).path, storeKey = StoreKey.Passphrase("p"),
            serverAddr = server.addr, trust = Trust.PinnedCertFile(server.certFile.path), insecureFastKdf = true,
        ))
        runBlocking {
            open("alice").use { alice ->
                open("bob").use { bob ->
                    alice.register("alice", "listener test password")
                    bob.register("bob", "listener test password")
                    val texts = LinkedBlockingQueue<String>()
                    val thrown = LinkedBlockingQueue<Int>()
                    val counting = bob.subscribe { e ->
                        ((e as? Event.Message)?.message?.body as? Body.Text)?.let { texts.put(it.text) }
                    }
                    val throwing = bob.subscribe { e ->
                        if (e is Event.Message) {
                            thrown.put(1)
                            throw IllegalStateException("a listener bug")
                        }
                    }
                    val group = alice.createGroup("listeners", postQuantum = false)
                    alice.invite(group, listOf("bob"))
                    alice.sendText(group, "one")
                    alice.sendText(group, "two")
                    assertEquals("one", texts.poll(10, TimeUnit.SECONDS))
                    assertEquals("two", texts.poll(10, TimeUnit.SECONDS))
                    // The throwing listener was called for both: its first throw did not end it.
                    repeat(2) { assertNotNull(thrown.poll(10, TimeUnit.SECONDS), "throwing listener call ${it + 1}") }
                    counting.close()
                    throwing.close()
                    val cursor = bob.eventCursor
                    alice.sendText(group, "three")
                    // The event happened (the cursor log has it) but no listener got it.
                    val record = bob.raw.waitEventAfter(cursor.toULong(), java.time.Duration.ofSeconds(10))
                    assertNotNull(record)
                    var sawThree = record.event is Event.Message
                    var c = record.cursor
                    while (!sawThree) {
                        val r = bob.raw.waitEventAfter(c, java.time.Duration.ofSeconds(10)) ?: break
                        c = r.cursor
                        sawThree = r.event is Event.Message
                    }
                    assertTrue(sawThree, "bob received the third message")
                    assertNull(texts.poll(500, TimeUnit.MILLISECONDS), "a closed subscription got an event")
                    assertTrue(thrown.isEmpty(), "a closed subscription's listener was called")
                }
            }
        }
        base.deleteRecursively()
    }
}
