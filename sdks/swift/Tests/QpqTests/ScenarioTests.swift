import Foundation
import XCTest
@testable import Qpq

/// Records every event one client's `events(after: 0)` stream delivers.
final class Recorder: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [Event] = []
    private var task: Task<Void, Never>?

    init(_ client: QpqClient) {
        task = Task.detached { [weak self] in
            do {
                for try await e in client.events(after: 0) { self?.append(e) }
            } catch {}
        }
    }

    private func append(_ e: Event) { lock.lock(); list.append(e); lock.unlock() }
    var events: [Event] { lock.lock(); defer { lock.unlock() }; return list }
    func stop() { task?.cancel() }

    /// Waits (10 s by default) until `pred` holds for the events so far.
    func await(_ what: String, timeout: TimeInterval = 10, _ pred: ([Event]) -> Bool) async throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !pred(events) {
            if Date() > deadline { throw NSError(domain: "qpq", code: 1, userInfo: [NSLocalizedDescriptionKey: "no \(what) within \(timeout) s"]) }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
    }

    func count(text: String) -> Int { texts().filter { $0 == text }.count }
    func texts() -> [String] {
        events.compactMap { e in
            if case let .message(m) = e, case let .text(t) = m.body { return t }
            return nil
        }
    }
}

/// The shared story state: XCTest makes a new instance per test method.
final class Story: @unchecked Sendable {
    static let shared = Story()
    var server: TestServer!
    var dirs: [String: URL] = [:]
    var clients: [String: QpqClient] = [:]
    var recorders: [String: Recorder] = [:]
    var group = ""
    let password = "correct horse battery staple"

    func config(_ name: String) -> ClientConfig {
        let dir = dirs[name] ?? FileManager.default.temporaryDirectory.appendingPathComponent("qpq-swift-\(name)-\(UUID())")
        dirs[name] = dir
        return ClientConfig(dataDir: dir.path, storeKey: .passphrase(passphrase: "store passphrase of \(name)"),
                            serverAddr: server.addr, trust: .pinnedCertFile(path: server.certPath),
                            serverName: "localhost", requestTimeoutMs: 15000, lockTimeoutMs: 0, insecureFastKdf: true)
    }

    func open(_ name: String) async throws -> QpqClient {
        let c = try await QpqClient.open(config(name))
        clients[name] = c
        recorders[name] = Recorder(c)
        return c
    }
}

private func isText(_ e: Event, _ text: String, from sender: String) -> Bool {
    if case let .message(m) = e, case let .text(t) = m.body { return t == text && m.sender == sender }
    return false
}

/// SCENARIO.md, every step in order (method names sort), against a real qpq-server.
final class ScenarioTests: XCTestCase {
    var s: Story { Story.shared }
    var alice: QpqClient { s.clients["alice"]! }
    var bob: QpqClient { s.clients["bob"]! }
    var carol: QpqClient { s.clients["carol"]! }

    override class func setUp() {
        super.setUp()
        Story.shared.server = try! TestServer()
    }

    override class func tearDown() {
        for r in Story.shared.recorders.values { r.stop() }
        for c in Story.shared.clients.values { c.shutdown() }
        Story.shared.server.stop()
        super.tearDown()
    }

    func testStep01_openThreeClients() async throws {
        for name in ["alice", "bob", "carol"] {
            let c = try await s.open(name)
            let account = await c.account()
            XCTAssertNil(account)
        }
    }

    func testStep02_registerAll() async throws {
        for (name, c) in s.clients {
            _ = try await c.register(name, password: s.password)
            let a = await c.account()
            XCTAssertEqual(a?.username, name)
            XCTAssertEqual(a?.identityKey.count, 32)
            XCTAssertEqual(a?.deviceKey.count, 32)
        }
    }

    func testStep03_wrongPasswordIsUnauthorized() async throws {
        let fourth = try await QpqClient.open(s.config("alice-elsewhere"))
        do {
            _ = try await fourth.login("alice", password: "not the password")
            XCTFail("logged in with a wrong password")
        } catch let e as QpqError {
            guard case .Unauthorized = e else { return XCTFail("got \(e)") }
            XCTAssertEqual(e.code, .unauthorized)
        }
        fourth.shutdown()
        XCTAssertFalse(FileManager.default.fileExists(atPath: s.dirs["alice-elsewhere"]!.appendingPathComponent("qpq-client.db").path))
    }

    func testStep04_postQuantumGroupAndInvite() async throws {
        s.group = try await alice.createGroup("scenario", postQuantum: true)
        try await alice.invite(s.group, ["bob", "carol"])
        let conv = try await alice.conversation(s.group)
        XCTAssertTrue(conv.postQuantum)
        XCTAssertEqual(conv.ciphersuite, "MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519")
        let group = s.group
        for name in ["bob", "carol"] {
            try await s.recorders[name]!.await("joined") { evs in
                evs.contains { if case let .conversationJoined(c) = $0 { return c.id == group }; return false }
            }
        }
    }

    func testStep05_membersEverywhere() async throws {
        for c in [alice, bob, carol] {
            let names = try await c.members(s.group).map(\.username).sorted()
            XCTAssertEqual(names, ["alice", "bob", "carol"])
        }
        for name in ["bob", "carol"] {
            let joined = s.recorders[name]!.events.filter { if case .conversationJoined = $0 { return true }; return false }
            XCTAssertEqual(joined.count, 1)
        }
    }

    func testStep06_aliceSendsNonAscii() async throws {
        let text = "hello from alice ✓"
        _ = try await alice.sendText(s.group, text)
        for name in ["bob", "carol"] {
            try await s.recorders[name]!.await("the message") { $0.contains { isText($0, text, from: "alice") } }
            XCTAssertEqual(s.recorders[name]!.count(text: text), 1)
        }
        let mine = try await alice.messages(s.group).filter { if case let .text(t) = $0.body { return t == text }; return false }
        XCTAssertEqual(mine.count, 1)
        XCTAssertTrue(mine[0].outgoing)
    }

    func testStep07_bobSends() async throws {
        _ = try await bob.sendText(s.group, "hi from bob")
        for name in ["alice", "carol"] {
            try await s.recorders[name]!.await("bob's message") { $0.contains { isText($0, "hi from bob", from: "bob") } }
            XCTAssertEqual(s.recorders[name]!.count(text: "hi from bob"), 1)
        }
    }

    func testStep08_carolComesBack() async throws {
        s.recorders["carol"]!.stop()
        carol.shutdown()
        _ = try await alice.sendText(s.group, "while you were away")
        let carol2 = try await s.open("carol")
        try await s.recorders["carol"]!.await("the missed message") { $0.contains { isText($0, "while you were away", from: "alice") } }
        XCTAssertEqual(s.recorders["carol"]!.count(text: "while you were away"), 1)
        let history = try await carol2.messages(s.group, limit: 100).compactMap { m -> String? in
            if case let .text(t) = m.body { return t }; return nil
        }
        XCTAssertTrue(history.contains("hello from alice ✓") && history.contains("hi from bob"))
    }

    func testStep09_aliceRemovesCarol() async throws {
        try await alice.remove(s.group, "carol")
        let group = s.group
        try await s.recorders["carol"]!.await("removed") { $0.contains { if case let .removed(c, _, _) = $0 { return c == group }; return false } }
        try await s.recorders["bob"]!.await("members changed") { evs in
            evs.contains { if case let .membersChanged(c, _, _, removed, _, _) = $0 { return c == group && removed.contains("carol") }; return false }
        }
    }

    func testStep10_afterRemoval() async throws {
        let before = s.recorders["carol"]!.texts().count
        _ = try await alice.sendText(s.group, "after removal")
        try await s.recorders["bob"]!.await("after removal") { $0.contains { isText($0, "after removal", from: "alice") } }
        do {
            try await s.recorders["carol"]!.await("a message at carol", timeout: 2) { _ in self.s.recorders["carol"]!.texts().count > before }
            XCTFail("carol got a message after her removal")
        } catch {}
    }

    func testStep11_bobRotates() async throws {
        let before = try await alice.conversation(s.group).epoch
        try await bob.rotateKeys(s.group)
        _ = try await alice.sync()
        _ = try await alice.sendText(s.group, "after rotation")
        try await s.recorders["bob"]!.await("after rotation") { $0.contains { isText($0, "after rotation", from: "alice") } }
        let a = try await alice.conversation(s.group).epoch
        let b = try await bob.conversation(s.group).epoch
        XCTAssertEqual(a, b)
        XCTAssertGreaterThan(a, before)
    }

    func testStep12_safetyNumbers() async throws {
        let ab = try await alice.safetyNumber("bob")
        let ba = try await bob.safetyNumber("alice")
        XCTAssertEqual(ab, ba)
    }

    func testStep13_typedErrorsAndStillWorking() async throws {
        do { try await alice.invite(s.group, ["nobody-such-user"]); XCTFail("invited nobody") } catch QpqError.NotFound {}
        do { _ = try await alice.sendText(String(repeating: "00", count: 16), "to nowhere"); XCTFail("sent") } catch QpqError.NotFound {}
        do { _ = try await alice.sendText("not-an-id", "to nowhere"); XCTFail("sent") } catch QpqError.InvalidInput {}
        let id = try await alice.sendText(s.group, "still working")
        XCTAssertEqual(id.count, 32)
    }

    func testStep14_nextEventTimesOut() async throws {
        while try await carol.nextEvent(timeout: 0) != nil {}
        let start = Date()
        let e = try await carol.nextEvent(timeout: 0.2)
        let took = Date().timeIntervalSince(start)
        XCTAssertNil(e)
        XCTAssertTrue(took >= 0.15 && took <= 2, "returned after \(took) s")
    }

    func testStep15_cancellation() async throws {
        while try await bob.nextEvent(timeout: 0) != nil {}
        let bob = self.bob
        let waiting = Task { try await bob.nextEvent(timeout: 10) }
        let start = Date()
        waiting.cancel()
        do {
            _ = try await waiting.value
            XCTFail("the cancelled wait returned a value")
        } catch is CancellationError {}
        XCTAssertLessThan(Date().timeIntervalSince(start), 1)
        // The engine's interrupt, from another thread, of a wait blocked in native code
        // (QpqError.Cancelled); interrupted until it returns, as a later wait is not affected.
        let blocked = Task.detached { () -> String in
            do { _ = try bob.raw.nextEvent(timeout: 10); return "returned" } catch QpqError.Cancelled { return "cancelled" }
        }
        let t2 = Date()
        let interrupter = Task.detached { while Date().timeIntervalSince(t2) < 1 { bob.interrupt(); try? await Task.sleep(nanoseconds: 20_000_000) } }
        let outcome = try await blocked.value
        interrupter.cancel()
        XCTAssertEqual(outcome, "cancelled")
        XCTAssertLessThan(Date().timeIntervalSince(t2), 1)
        _ = try await bob.sendText(s.group, "after the cancelled waits")
    }

    func testStep16_closeTwiceThenClosed() async throws {
        for c in s.clients.values {
            c.shutdown()
            c.shutdown()
        }
        do { _ = try await alice.sendText(s.group, "too late"); XCTFail("sent after shutdown") } catch QpqError.Closed {}
        do { _ = try await bob.conversations(); XCTFail("read after shutdown") } catch QpqError.Closed {}
    }
}
