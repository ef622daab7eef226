package org.quicproquo

import java.time.Duration as JavaDuration
import kotlin.time.Duration
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.toJavaDuration
import kotlin.time.toKotlinDuration
import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.currentCoroutineContext
import kotlinx.coroutines.ensureActive
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.flow
import kotlinx.coroutines.flow.map
import kotlinx.coroutines.withContext
import org.quicproquo.ffi.Account
import org.quicproquo.ffi.Body
import org.quicproquo.ffi.Client
import org.quicproquo.ffi.ClientConfig
import org.quicproquo.ffi.Conversation
import org.quicproquo.ffi.Event
import org.quicproquo.ffi.EventListener
import org.quicproquo.ffi.EventRecord
import org.quicproquo.ffi.Member
import org.quicproquo.ffi.Message
import org.quicproquo.ffi.QpqException
import org.quicproquo.ffi.Registration
import org.quicproquo.ffi.Subscription

/**
 * The qpq client for Kotlin: one account, one encrypted store, one connection to a qpq-server.
 *
 * Every call that may block (network, disk, Argon2) is a `suspend` function that runs on
 * [dispatcher] (default [Dispatchers.IO]), so it is safe to call from the main thread of an
 * Android app. Incoming traffic is a cold [Flow] ([events], [eventRecords]) that resumes from
 * an event cursor without gaps, or a listener ([subscribe]).
 *
 * Errors are thrown as [QpqException], a sealed class with one subclass per pinned error code
 * (`core/client/errors.toml`); read the code with [code]. After [close] every call throws
 * [QpqException.Closed]. `close()` is idempotent and shuts the engine down (background receive,
 * connection, the store's lease): use `use { }`.
 *
 * What it will not do: retry failed calls, or run anything on the caller's thread that may
 * block. The generated low-level object is [raw] for what this layer does not wrap.
 */
class QpqClient private constructor(
    /** The generated UniFFI object; every method blocks. */
    val raw: Client,
    private val dispatcher: CoroutineDispatcher,
) : AutoCloseable {

    companion object {
        /** How long one native wait lasts before a cancelled coroutine is noticed. */
        internal val WAIT_SLICE: Duration = 250.milliseconds

        /**
         * Opens (or creates) the encrypted store described by [config]; needs no network.
         * Throws [QpqException.Storage] for a wrong key, [QpqException.Busy] when another
         * process holds the store.
         */
        suspend fun open(
            config: ClientConfig,
            dispatcher: CoroutineDispatcher = Dispatchers.IO,
        ): QpqClient = withContext(dispatcher) { QpqClient(Client.open(config), dispatcher) }

        /** [open] for callers that are not in a coroutine (blocks the calling thread). */
        fun openBlocking(config: ClientConfig): QpqClient = QpqClient(Client.open(config), Dispatchers.IO)
    }

    private suspend inline fun <T> io(crossinline block: Client.() -> T): T =
        withContext(dispatcher) { raw.block() }

    /** Registers [username] with OPAQUE (the password never leaves the device), then logs in. */
    suspend fun register(username: String, password: String): Account = io { register(username, password) }

    /** Logs in; a wrong password throws [QpqException.Unauthorized]. */
    suspend fun login(username: String, password: String): Account = io { login(username, password) }

    /** Registers on first use, logs in when the name is taken. */
    suspend fun registerOrLogin(username: String, password: String): Registration =
        io { registerOrLogin(username, password) }

    /** Ends the session on the server (best effort); keys and history stay. */
    suspend fun logout(): Unit = io { logout() }

    /** The account in this store, or null before the first registration or login. Local. */
    suspend fun account(): Account? = io { account() }

    /** Looks a user up on the server. */
    suspend fun resolveUser(username: String): Member = io { resolveUser(username) }

    /** Creates a group ([postQuantum]: the X-Wing suite); returns its id (hex). */
    suspend fun createGroup(name: String, postQuantum: Boolean): String = io { createGroup(name, postQuantum) }

    /** Creates (or reuses) the DM with [username]; returns its id (hex). */
    suspend fun createDm(username: String): String = io { createDm(username) }

    /** Adds every device of every named user in one commit. */
    suspend fun invite(conversation: String, usernames: List<String>): Unit = io { invite(conversation, usernames) }

    /** Removes every device of [username]. */
    suspend fun remove(conversation: String, username: String): Unit = io { remove(conversation, username) }

    /** Leaves the conversation. */
    suspend fun leave(conversation: String): Unit = io { leave(conversation) }

    /** Accepts a conversation whose consent is `Requested` (ADR 0060). Local only. */
    suspend fun accept(conversation: String): Unit = io { accept(conversation) }

    /** Declines a conversation: leaves it, marks it `Denied`; [block] also blocks the inviter. */
    suspend fun decline(conversation: String, block: Boolean = false): Unit = io { decline(conversation, block) }

    /** Blocks [username] on the server (ADR 0060). Idempotent. */
    suspend fun block(username: String): Unit = io { block(username) }

    /** Ends a block. Idempotent. */
    suspend fun unblock(username: String): Unit = io { unblock(username) }

    /** Usernames this account blocks. */
    suspend fun blocked(): List<String> = io { blocked() }

    /** Makes [username] an admin of the group. */
    suspend fun promote(conversation: String, username: String): Unit = io { promote(conversation, username) }

    /** A self-update commit: fresh key material for this device. */
    suspend fun rotateKeys(conversation: String): Unit = io { rotateKeys(conversation) }

    /**
     * Stores and queues [body]; returns the message id (hex). Delivery is reported by the
     * [Event.MessageSent] / [Event.MessageFailed] events, never thrown here.
     */
    suspend fun send(conversation: String, body: Body): String = io { send(conversation, body) }

    /** [send] with an id chosen by the caller (32 hex digits), so a retry never duplicates. */
    suspend fun sendWithId(conversation: String, id: String, body: Body): String =
        io { sendWithId(conversation, id, body) }

    /** [send] of a text. */
    suspend fun sendText(conversation: String, text: String): String = io { sendText(conversation, text) }

    /** Every local conversation. */
    suspend fun conversations(): List<Conversation> = io { conversations() }

    /** One conversation; [QpqException.NotFound] when unknown. */
    suspend fun conversation(id: String): Conversation = io { conversation(id) }

    /** The name to show: the group's name, or `@peer` for a DM. */
    suspend fun displayName(conversation: Conversation): String = io { displayName(conversation) }

    /** Finds a conversation by position (`"#2"`), hex id prefix, display name or `@user`. */
    suspend fun findConversation(what: String): Conversation = io { findConversation(what) }

    /** Up to [limit] messages, oldest first; [before] (a `receivedAtMs`) pages backwards. */
    suspend fun messages(conversation: String, limit: Int = 50, before: Long? = null): List<Message> =
        io { messages(conversation, limit.toUInt(), before?.toULong()) }

    /** Members of a conversation as the MLS group sees them. */
    suspend fun members(conversation: String): List<Member> = io { members(conversation) }

    /** The safety number between this account and [username] (60 digits in 12 groups). */
    suspend fun safetyNumber(username: String): String = io { safetyNumber(username) }

    /** Fetches and processes everything queued now; returns the events produced. */
    suspend fun sync(): List<Event> = io { sync() }

    /** Round-trip time of a health call. */
    suspend fun ping(): Duration = io { ping() }.toKotlinDuration()

    /** Cursor of the newest event so far (0 = none yet). */
    val eventCursor: Long get() = raw.eventCursor().toLong()

    /**
     * The next event from the queue (used while no subscription exists), waiting up to
     * [timeout]; null on timeout. Cancelling the calling coroutine returns within about
     * [WAIT_SLICE] with a `CancellationException`; [interrupt] makes it throw
     * [QpqException.Cancelled].
     */
    suspend fun nextEvent(timeout: Duration): Event? {
        val deadline = System.nanoTime() + timeout.inWholeNanoseconds
        while (true) {
            currentCoroutineContext().ensureActive()
            val left = (deadline - System.nanoTime()).coerceAtLeast(0)
            val slice = minOf(left, WAIT_SLICE.inWholeNanoseconds)
            val event = io { nextEvent(JavaDuration.ofNanos(slice)) }
            if (event != null || left <= slice) return event
        }
    }

    /**
     * Every event numbered after [after] (default: the current cursor, i.e. from now on), in
     * order, with its cursor. Keep the last cursor you handled and pass it again to resume
     * without gaps (the engine keeps the last 4,096). The flow never consumes events from
     * other readers, completes when the client is closed, and stops when the collecting
     * coroutine is cancelled (within about [WAIT_SLICE]).
     */
    fun eventRecords(after: Long? = null): Flow<EventRecord> = flow {
        var cursor = (after ?: eventCursor).toULong()
        while (true) {
            currentCoroutineContext().ensureActive()
            val record = try {
                io { waitEventAfter(cursor, WAIT_SLICE.toJavaDuration()) }
            } catch (e: QpqException.Closed) {
                return@flow
            } catch (e: QpqException.Cancelled) {
                continue // someone called interrupt(): not a reason to end this stream
            } ?: continue
            cursor = record.cursor
            emit(record)
        }
    }

    /** [eventRecords] without the cursors. */
    fun events(after: Long? = null): Flow<Event> = eventRecords(after).map { it.event }

    /**
     * Calls [listener] for every later event, on a thread of the engine's (not the caller's),
     * one at a time and in order, until the returned [Subscription] is closed or cancelled.
     * A listener that throws is logged; the next event is still delivered.
     */
    fun subscribe(listener: (Event) -> Unit): Subscription =
        raw.subscribe(object : EventListener {
            override fun onEvent(event: Event) = listener(event)
        })

    /** Wakes every blocked [nextEvent] now: they throw [QpqException.Cancelled]. */
    fun interrupt() = raw.interrupt()

    /**
     * Shuts the engine down (background receive, connection, store lease) and frees the native
     * object. Idempotent; every later call throws [QpqException.Closed]. Blocks briefly.
     */
    override fun close() {
        raw.shutdown()
    }
}
