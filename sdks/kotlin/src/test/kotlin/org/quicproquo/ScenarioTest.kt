package org.quicproquo

import java.io.File
import java.nio.file.Files
import java.time.Duration as JavaDuration
import java.util.concurrent.CompletableFuture
import java.util.concurrent.TimeUnit
import kotlin.test.assertEquals
import kotlin.test.assertFalse
import kotlin.test.assertNotEquals
import kotlin.test.assertNull
import kotlin.test.assertTrue
import kotlin.time.Duration
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.Duration.Companion.seconds
import kotlin.time.TimeSource
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.flow.update
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeoutOrNull
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.MethodOrderer
import org.junit.jupiter.api.Order
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance
import org.junit.jupiter.api.TestMethodOrder
import org.junit.jupiter.api.assertThrows
import org.quicproquo.ffi.Body
import org.quicproquo.ffi.ClientConfig
import org.quicproquo.ffi.Event
import org.quicproquo.ffi.QpqException
import org.quicproquo.ffi.StoreKey
import org.quicproquo.ffi.Trust

/**
 * SCENARIO.md, every step, in order, against a real qpq-server process. Each step is its own
 * test (they share the story's state); every wait for an event has a 10 s deadline and no step
 * sleeps to let things settle.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@TestMethodOrder(MethodOrderer.OrderAnnotation::class)
class ScenarioTest {
    private val server = TestServer()
    private val scope = CoroutineScope(SupervisorJob() + Dispatchers.IO)
    private val dirs = mutableMapOf<String, File>()
    private val clients = mutableMapOf<String, QpqClient>()
    private val recorders = mutableMapOf<String, Recorder>()
    private lateinit var group: String
    private val password = "correct horse battery staple"
    private val wait = 10.seconds

    /** Every event one client's [QpqClient.events] flow delivered, from cursor 0 on. */
    inner class Recorder(client: QpqClient) {
        val events = MutableStateFlow<List<Event>>(emptyList())
        val job: Job = scope.launch { client.events(after = 0).collect { e -> events.update { it + e } } }

        suspend fun await(what: String, timeout: Duration = wait, pred: (List<Event>) -> Boolean) {
            withTimeoutOrNull(timeout) { events.first(pred) }
                ?: throw AssertionError("no $what within $timeout; got ${events.value}")
        }

        fun texts(): List<String> = events.value.mapNotNull { ((it as? Event.Message)?.message?.body as? Body.Text)?.text }
        fun count(text: String) = texts().count { it == text }
    }

    private fun config(name: String) = ClientConfig(
        dataDir = dirs.getOrPut(name) { Files.createTempDirectory("qpq-kotlin-$name").toFile() }.path,
        storeKey = StoreKey.Passphrase("store passphrase of $name"),
        serverAddr = server.addr,
        trust = Trust.PinnedCertFile(server.certFile.path),
        insecureFastKdf = true,
    )

    private suspend fun openClient(name: String): QpqClient {
        val c = QpqClient.open(config(name))
        clients[name] = c
        recorders[name] = Recorder(c)
        return c
    }

    private val alice get() = clients.getValue("alice")
    private val bob get() = clients.getValue("bob")
    private val carol get() = clients.getValue("carol")
    private fun rec(name: String) = recorders.getValue(name)

    private fun messageFrom(text: String, sender: String) = { evs: List<Event> ->
        evs.any { it is Event.Message && (it.message.body as? Body.Text)?.text == text && it.message.sender == sender }
    }

    @AfterAll
    fun tearDown() {
        scope.cancel()
        clients.values.forEach { it.close() }
        server.close()
        dirs.values.forEach { it.deleteRecursively() }
    }

    @Test @Order(1)
    fun step01_openThreeClients() = runBlocking {
        for (name in listOf("alice", "bob", "carol")) assertNull(openClient(name).account(), name)
        assertEquals(3, clients.size)
    }

    @Test @Order(2)
    fun step02_registerAll() = runBlocking {
        for ((name, c) in clients) {
            c.register(name, password)
            val a = c.account() ?: throw AssertionError("$name has no account")
            assertEquals(name, a.username)
            assertEquals(32, a.identityKey.size)
            assertEquals(32, a.deviceKey.size)
        }
    }

    @Test @Order(3)
    fun step03_wrongPasswordIsTypedUnauthorized() = runBlocking {
        val fourth = QpqClient.open(config("alice-elsewhere"))
        fourth.use {
            val e = assertThrows<QpqException> { runBlocking { it.login("alice", "not the password") } }
            assertTrue(e is QpqException.Unauthorized, "got $e")
            assertEquals(org.quicproquo.ffi.ErrorCode.UNAUTHORIZED, e.code)
        }
        assertFalse(File(dirs.getValue("alice-elsewhere"), "qpq-client.db").exists(), "nothing is created")
    }

    @Test @Order(4)
    fun step04_postQuantumGroupAndInvite() = runBlocking {
        group = alice.createGroup("scenario", postQuantum = true)
        alice.invite(group, listOf("bob", "carol"))
        val conv = alice.conversation(group)
        assertTrue(conv.postQuantum)
        assertEquals("MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519", conv.ciphersuite)
        for (name in listOf("bob", "carol")) {
            rec(name).await("joined at $name") { evs -> evs.any { it is Event.ConversationJoined && it.conversation.id == group } }
        }
    }

    @Test @Order(5)
    fun step05_membersEverywhere() = runBlocking {
        for (c in listOf(alice, bob, carol)) {
            assertEquals(listOf("alice", "bob", "carol"), c.members(group).map { it.username }.sorted())
        }
        for (name in listOf("bob", "carol")) {
            assertEquals(1, rec(name).events.value.count { it is Event.ConversationJoined && it.conversation.id == group })
        }
    }

    @Test @Order(6)
    fun step06_aliceSendsNonAscii() = runBlocking {
        val text = "hello from alice ✓"
        alice.sendText(group, text)
        for (name in listOf("bob", "carol")) {
            rec(name).await("the message at $name", pred = messageFrom(text, "alice"))
            val m = rec(name).events.value.filterIsInstance<Event.Message>().single { (it.message.body as? Body.Text)?.text == text }
            assertFalse(m.message.outgoing)
            assertEquals("alice", m.message.sender)
        }
        val mine = alice.messages(group).single { (it.body as? Body.Text)?.text == text }
        assertTrue(mine.outgoing)
    }

    @Test @Order(7)
    fun step07_bobSends() = runBlocking {
        bob.sendText(group, "hi from bob")
        for (name in listOf("alice", "carol")) rec(name).await("bob's message at $name", pred = messageFrom("hi from bob", "bob"))
        for (name in listOf("alice", "carol")) assertEquals(1, rec(name).count("hi from bob"), name)
        for (name in listOf("bob", "carol")) assertEquals(1, rec(name).count("hello from alice ✓"), name)
    }

    @Test @Order(8)
    fun step08_carolComesBack() = runBlocking {
        recorders.getValue("carol").job.cancel()
        carol.close()
        alice.sendText(group, "while you were away")
        val carol2 = openClient("carol")
        rec("carol").await("the missed message", pred = messageFrom("while you were away", "alice"))
        assertEquals(1, rec("carol").count("while you were away"))
        val history = carol2.messages(group, limit = 100).mapNotNull { (it.body as? Body.Text)?.text }
        assertTrue(history.containsAll(listOf("hello from alice ✓", "hi from bob", "while you were away")), "$history")
    }

    @Test @Order(9)
    fun step09_aliceRemovesCarol() = runBlocking {
        alice.remove(group, "carol")
        rec("carol").await("the removed event") { evs -> evs.any { it is Event.Removed && it.conversation == group } }
        rec("bob").await("members changed naming carol") { evs ->
            evs.any { it is Event.MembersChanged && it.conversation == group && "carol" in it.removed }
        }
    }

    @Test @Order(10)
    fun step10_afterRemoval() = runBlocking {
        alice.sendText(group, "after removal")
        rec("bob").await("after removal at bob", pred = messageFrom("after removal", "alice"))
        val before = rec("carol").events.value.count { it is Event.Message }
        val got = withTimeoutOrNull(2.seconds) { rec("carol").events.first { evs -> evs.count { it is Event.Message } > before } }
        assertNull(got, "carol got a message after her removal")
    }

    @Test @Order(11)
    fun step11_bobRotates() = runBlocking {
        val before = alice.conversation(group).epoch
        bob.rotateKeys(group)
        alice.sync() // alice processes bob's commit now rather than at her next long poll
        alice.sendText(group, "after rotation")
        rec("bob").await("after rotation at bob", pred = messageFrom("after rotation", "alice"))
        val (a, b) = alice.conversation(group).epoch to bob.conversation(group).epoch
        assertEquals(a, b)
        assertTrue(a > before, "epoch $a after $before")
    }

    @Test @Order(12)
    fun step12_safetyNumbers() = runBlocking {
        val ab = alice.safetyNumber("bob")
        assertEquals(ab, bob.safetyNumber("alice"))
        assertEquals(60, ab.count { it.isDigit() })
    }

    @Test @Order(13)
    fun step13_typedErrorsAndStillWorking() = runBlocking {
        assertThrows<QpqException.NotFound> { runBlocking { alice.invite(group, listOf("nobody-such-user")) } }
        assertThrows<QpqException.NotFound> { runBlocking { alice.sendText("00".repeat(16), "to nowhere") } }
        assertThrows<QpqException.InvalidInput> { runBlocking { alice.sendText("not-an-id", "to nowhere") } }
        val id = alice.sendText(group, "still working")
        assertEquals(32, id.length)
        rec("bob").await("still working at bob", pred = messageFrom("still working", "alice"))
    }

    @Test @Order(14)
    fun step14_nextEventTimesOut() = runBlocking {
        // carol was removed: nothing more arrives for her. Drain what her queue holds first.
        while (carol.nextEvent(0.milliseconds) != null) Unit
        val t = TimeSource.Monotonic.markNow()
        assertNull(carol.nextEvent(200.milliseconds))
        val took = t.elapsedNow()
        assertTrue(took >= 150.milliseconds && took <= 2.seconds, "returned after $took")
    }

    @Test @Order(15)
    fun step15_cancellation() = runBlocking {
        while (bob.nextEvent(0.milliseconds) != null) Unit
        // Kotlin's cancellation: cancel the coroutine blocked in nextEvent.
        val waiting = scope.launch { bob.nextEvent(10.seconds) }
        val t = TimeSource.Monotonic.markNow()
        waiting.cancel()
        waiting.join()
        assertTrue(waiting.isCancelled)
        assertTrue(t.elapsedNow() < 1.seconds, "cancelled after ${t.elapsedNow()}")
        // The engine's own interrupt, from another thread, of a wait blocked in native code.
        val blocked = CompletableFuture.supplyAsync {
            try {
                bob.raw.nextEvent(JavaDuration.ofSeconds(10)); "returned"
            } catch (e: QpqException.Cancelled) {
                "cancelled"
            }
        }
        val t2 = TimeSource.Monotonic.markNow()
        // The wait may not have started yet when interrupt() runs (a later wait is not
        // affected), so interrupt until it returns.
        while (!blocked.isDone && t2.elapsedNow() < 1.seconds) {
            bob.interrupt()
            try { blocked.get(20, TimeUnit.MILLISECONDS) } catch (_: java.util.concurrent.TimeoutException) {}
        }
        assertEquals("cancelled", blocked.get(1, TimeUnit.SECONDS))
        assertTrue(t2.elapsedNow() < 1.seconds)
        assertEquals(32, bob.sendText(group, "after the cancelled waits").length)
    }

    @Test @Order(16)
    fun step16_closeTwiceThenClosed() = runBlocking {
        for (c in clients.values) {
            c.close()
            c.close()
        }
        assertThrows<QpqException.Closed> { runBlocking { alice.sendText(group, "too late") } }
        assertThrows<QpqException.Closed> { runBlocking { bob.conversations() } }
        Unit
    }
}
