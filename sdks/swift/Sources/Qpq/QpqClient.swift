// The idiomatic Swift layer over the UniFFI-generated bindings (module QpqFFI): async methods
// that run the blocking engine calls off the caller's executor, an AsyncThrowingStream of
// events that resumes from a cursor, and the typed error's code. Kept small on purpose: all
// behaviour is in qpq-core.
import Foundation
@_exported import QpqFFI

/// The qpq client: one account, one encrypted store, one connection to a qpq-server.
///
/// Every method that may block (network, disk, Argon2) is `async` and runs on a queue of its
/// own, never on the caller's executor (the main actor stays free). Errors are thrown as
/// `QpqError`, an enum with one case per pinned code (`core/client/errors.toml`); `code` gives
/// the number. `shutdown()` (also run by `deinit`) is idempotent; later calls throw
/// `QpqError.Closed`.
public final class QpqClient: Sendable {
    /// The generated object; its methods block.
    public let raw: Client
    private static let queue = DispatchQueue(label: "qpq.client", qos: .userInitiated, attributes: .concurrent)
    /// How long one native wait lasts before a cancelled task is noticed.
    static let waitSlice: TimeInterval = 0.25

    private init(raw: Client) { self.raw = raw }

    deinit { raw.shutdown() }

    /// Opens (or creates) the encrypted store; needs no network. `Storage` for a wrong key,
    /// `Busy` when another process holds the store.
    public static func open(_ config: ClientConfig) async throws -> QpqClient {
        try await run { QpqClient(raw: try Client.open(config: config)) }
    }

    private static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { cont in
            queue.async { cont.resume(with: Result { try body() }) }
        }
    }

    private func run<T: Sendable>(_ body: @escaping @Sendable (Client) throws -> T) async throws -> T {
        let raw = self.raw
        return try await Self.run { try body(raw) }
    }

    /// Registers `username` with OPAQUE, then logs in. `Conflict` when taken.
    public func register(_ username: String, password: String) async throws -> Account {
        try await run { try $0.register(username: username, password: password) }
    }

    /// Logs in; a wrong password throws `QpqError.Unauthorized`.
    public func login(_ username: String, password: String) async throws -> Account {
        try await run { try $0.login(username: username, password: password) }
    }

    /// Registers on first use, logs in when the name is taken.
    public func registerOrLogin(_ username: String, password: String) async throws -> Registration {
        try await run { try $0.registerOrLogin(username: username, password: password) }
    }

    /// Ends the session on the server (best effort).
    public func logout() async throws { try await run { try $0.logout() } }

    /// The account in this store, or nil before the first registration or login.
    public func account() async -> Account? { try? await run { $0.account() } }

    /// Looks a user up on the server.
    public func resolveUser(_ username: String) async throws -> Member {
        try await run { try $0.resolveUser(username: username) }
    }

    /// Creates a group (`postQuantum`: the X-Wing suite); returns its id (hex).
    public func createGroup(_ name: String, postQuantum: Bool) async throws -> String {
        try await run { try $0.createGroup(name: name, postQuantum: postQuantum) }
    }

    /// Creates (or reuses) the DM with `username`; returns its id (hex).
    public func createDm(_ username: String) async throws -> String {
        try await run { try $0.createDm(username: username) }
    }

    /// Adds every device of every named user in one commit.
    public func invite(_ conversation: String, _ usernames: [String]) async throws {
        try await run { try $0.invite(conversation: conversation, usernames: usernames) }
    }

    /// Removes every device of `username`.
    public func remove(_ conversation: String, _ username: String) async throws {
        try await run { try $0.remove(conversation: conversation, username: username) }
    }

    /// Leaves the conversation.
    public func leave(_ conversation: String) async throws {
        try await run { try $0.leave(conversation: conversation) }
    }

    /// Accepts a conversation whose consent is `Requested` (ADR 0060). Local only.
    public func accept(_ conversation: String) async throws {
        try await run { try $0.accept(conversation: conversation) }
    }

    /// Declines a conversation: leaves it, marks it `Denied`; `block` also blocks the inviter.
    public func decline(_ conversation: String, block: Bool = false) async throws {
        try await run { try $0.decline(conversation: conversation, block: block) }
    }

    /// Blocks `username` on the server (ADR 0060). Idempotent.
    public func block(_ username: String) async throws { try await run { try $0.block(username: username) } }

    /// Ends a block. Idempotent.
    public func unblock(_ username: String) async throws { try await run { try $0.unblock(username: username) } }

    /// Usernames this account blocks.
    public func blocked() async throws -> [String] { try await run { try $0.blocked() } }

    /// Makes `username` an admin of the group.
    public func promote(_ conversation: String, _ username: String) async throws {
        try await run { try $0.promote(conversation: conversation, username: username) }
    }

    /// A self-update commit: fresh key material for this device.
    public func rotateKeys(_ conversation: String) async throws {
        try await run { try $0.rotateKeys(conversation: conversation) }
    }

    /// Stores and queues `body`; returns the message id. Delivery is an event, never an error.
    public func send(_ conversation: String, _ body: Body) async throws -> String {
        try await run { try $0.send(conversation: conversation, body: body) }
    }

    /// `send` with an id chosen by the caller (32 hex digits): a retry never duplicates.
    public func send(_ conversation: String, id: String, _ body: Body) async throws -> String {
        try await run { try $0.sendWithId(conversation: conversation, id: id, body: body) }
    }

    /// `send` of a text.
    public func sendText(_ conversation: String, _ text: String) async throws -> String {
        try await run { try $0.sendText(conversation: conversation, text: text) }
    }

    /// Every local conversation.
    public func conversations() async throws -> [Conversation] { try await run { try $0.conversations() } }

    /// One conversation; `NotFound` when unknown.
    public func conversation(_ id: String) async throws -> Conversation {
        try await run { try $0.conversation(conversation: id) }
    }

    /// The name to show: the group's name, or `@peer` for a DM.
    public func displayName(_ conversation: Conversation) async throws -> String {
        try await run { try $0.displayName(conversation: conversation) }
    }

    /// Finds a conversation by position (`"#2"`), hex id prefix, display name or `@user`.
    public func findConversation(_ what: String) async throws -> Conversation {
        try await run { try $0.findConversation(what: what) }
    }

    /// Up to `limit` messages, oldest first; `before` (a `receivedAtMs`) pages backwards.
    public func messages(_ conversation: String, limit: UInt32 = 50, before: UInt64? = nil) async throws -> [Message] {
        try await run { try $0.messages(conversation: conversation, limit: limit, before: before) }
    }

    /// Members of a conversation as the MLS group sees them.
    public func members(_ conversation: String) async throws -> [Member] {
        try await run { try $0.members(conversation: conversation) }
    }

    /// The safety number between this account and `username`.
    public func safetyNumber(_ username: String) async throws -> String {
        try await run { try $0.safetyNumber(username: username) }
    }

    /// Fetches and processes everything queued now; returns the events produced.
    public func sync() async throws -> [Event] { try await run { try $0.sync() } }

    /// Round-trip time of a health call, in seconds.
    public func ping() async throws -> TimeInterval { try await run { try $0.ping() } }

    /// Cursor of the newest event so far (0 = none yet).
    public var eventCursor: UInt64 { raw.eventCursor() }

    /// The next queued event, waiting up to `timeout` seconds; nil on timeout. Task
    /// cancellation is noticed within `waitSlice` and throws `CancellationError`;
    /// `interrupt()` makes it throw `QpqError.Cancelled`.
    public func nextEvent(timeout: TimeInterval) async throws -> Event? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            try Task.checkCancellation()
            let left = max(0, deadline.timeIntervalSinceNow)
            let slice = min(left, Self.waitSlice)
            let event = try await run { try $0.nextEvent(timeout: slice) }
            if event != nil || left <= slice { return event }
        }
    }

    /// Every event numbered after `after` (default: from now on), with its cursor, in order.
    /// Store the last cursor handled and pass it again to resume without gaps. The stream
    /// finishes when the client is shut down and stops when its consuming task is cancelled.
    public func eventRecords(after: UInt64? = nil) -> AsyncThrowingStream<EventRecord, Error> {
        let raw = self.raw
        let start = after ?? raw.eventCursor()
        return AsyncThrowingStream { continuation in
            let task = Task.detached {
                var cursor = start
                while !Task.isCancelled {
                    do {
                        let record = try await Self.run { try raw.waitEventAfter(cursor: cursor, timeout: Self.waitSlice) }
                        guard let record else { continue }
                        cursor = record.cursor
                        continuation.yield(record)
                    } catch QpqError.Closed {
                        break
                    } catch QpqError.Cancelled {
                        continue
                    } catch {
                        continuation.finish(throwing: error)
                        return
                    }
                }
                continuation.finish()
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// `eventRecords` without the cursors.
    public func events(after: UInt64? = nil) -> AsyncThrowingStream<Event, Error> {
        let records = eventRecords(after: after)
        return AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    for try await record in records { continuation.yield(record.event) }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// Calls `listener` for every later event on an engine thread, in order, until the returned
    /// subscription is cancelled or released.
    public func subscribe(_ listener: @escaping @Sendable (Event) -> Void) throws -> Subscription {
        try raw.subscribe(listener: ClosureListener(listener))
    }

    /// Sets (or clears, with nil) the one listener the client manages itself.
    public func setListener(_ listener: (@Sendable (Event) -> Void)?) {
        raw.setListener(listener: listener.map { ClosureListener($0) })
    }

    /// Wakes every blocked `nextEvent` now: they throw `QpqError.Cancelled`.
    public func interrupt() { raw.interrupt() }

    /// Stops background receive, closes the connection, releases the store. Idempotent.
    public func shutdown() { raw.shutdown() }
}

/// A closure as the generated `EventListener` protocol.
final class ClosureListener: EventListener, @unchecked Sendable {
    private let body: @Sendable (Event) -> Void
    init(_ body: @escaping @Sendable (Event) -> Void) { self.body = body }
    func onEvent(event: Event) throws { body(event) }
}

extension QpqError {
    /// The pinned code (`core/client/errors.toml`).
    public var code: ErrorCode {
        switch self {
        case .Network: return .network
        case .Unauthorized: return .unauthorized
        case .NotFound: return .notFound
        case .Conflict: return .conflict
        case .InvalidInput: return .invalidInput
        case .Crypto: return .crypto
        case .Storage: return .storage
        case .RateLimited: return .rateLimited
        case .Timeout: return .timeout
        case .Closed: return .closed
        case .Internal: return .internal
        case .Cancelled: return .cancelled
        case .Busy: return .busy
        case .Forbidden: return .forbidden
        case .AlreadyMember: return .alreadyMember
        }
    }
}
