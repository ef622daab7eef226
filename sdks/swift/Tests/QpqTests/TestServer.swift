import Foundation

/// A real `qpq-server` child process on a free loopback port with its own temporary data dir
/// (binary from `QPQ_SERVER_BIN`, default the workspace's target/debug/qpq-server).
final class TestServer {
    let dataDir: URL
    let addr: String
    let certPath: String
    private let process = Process()

    init() throws {
        let here = URL(fileURLWithPath: #filePath)
        let root = here.deletingLastPathComponent().appendingPathComponent("../../../..").standardized
        let bin = ProcessInfo.processInfo.environment["QPQ_SERVER_BIN"]
            ?? root.appendingPathComponent("target/debug/qpq-server").path
        dataDir = FileManager.default.temporaryDirectory.appendingPathComponent("qpq-swift-server-\(UUID())")
        try FileManager.default.createDirectory(at: dataDir, withIntermediateDirectories: true)
        process.executableURL = URL(fileURLWithPath: bin)
        process.arguments = ["--listen", "127.0.0.1:0", "--log-format", "json", "--log-level", "warn,qpq_server=info",
                             "--data-dir", dataDir.path]
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        var found: String?
        var buffer = Data()
        while found == nil {
            let chunk = stderr.fileHandleForReading.availableData
            if chunk.isEmpty { throw NSError(domain: "qpq", code: 1, userInfo: [NSLocalizedDescriptionKey: "server exited"]) }
            buffer.append(chunk)
            for line in String(decoding: buffer, as: UTF8.self).split(separator: "\n") where line.contains("qpq-server listening") {
                if let r = line.range(of: #""listen":"([^"]+)""#, options: .regularExpression) {
                    found = String(line[r].dropFirst(10).dropLast())
                }
            }
        }
        addr = found!
        certPath = dataDir.appendingPathComponent("server-cert.der").path
        // Keep draining the log so the child never blocks on a full pipe.
        stderr.fileHandleForReading.readabilityHandler = { _ = $0.availableData }
    }

    func stop() {
        process.terminate()
        process.waitUntilExit()
        try? FileManager.default.removeItem(at: dataDir)
    }
}
