package org.quicproquo

import java.io.File
import java.nio.file.Files
import java.util.concurrent.TimeUnit

/**
 * A real `qpq-server` child process on a free loopback port with its own temporary data dir,
 * started from the workspace's debug build (system property `qpq.server.bin`).
 */
class TestServer : AutoCloseable {
    /** The server's data directory (certificate, database). */
    val dataDir: File = Files.createTempDirectory("qpq-kotlin-server").toFile()
    /** `host:port` it listens on. */
    val addr: String
    /** Its self-signed certificate, DER, which the clients pin. */
    val certFile: File = File(dataDir, "server-cert.der")
    private val process: Process

    init {
        val bin = System.getProperty("qpq.server.bin") ?: error("qpq.server.bin is not set")
        check(File(bin).canExecute()) { "no server binary at $bin: cargo build -p qpq-server" }
        process = ProcessBuilder(
            bin, "--listen", "127.0.0.1:0", "--log-format", "json", "--log-level", "warn,qpq_server=info",
            "--data-dir", dataDir.path,
        ).redirectOutput(ProcessBuilder.Redirect.DISCARD).start()
        val lines = process.errorStream.bufferedReader().lineSequence().iterator()
        val listen = Regex("\"listen\":\"([^\"]+)\"")
        var found: String? = null
        while (found == null) {
            check(lines.hasNext()) { "the server exited before listening" }
            val line = lines.next()
            if (line.contains("qpq-server listening")) found = listen.find(line)?.groupValues?.get(1)
        }
        addr = found
        // Keep draining the log so the child never blocks on a full pipe.
        Thread {
            try {
                while (lines.hasNext()) lines.next()
            } catch (_: java.io.IOException) {
                // the server was stopped: its stderr is closed
            }
        }.apply { isDaemon = true }.start()
        check(certFile.isFile) { "the server wrote no certificate at $certFile" }
    }

    override fun close() {
        process.destroy()
        if (!process.waitFor(10, TimeUnit.SECONDS)) process.destroyForcibly()
        dataDir.deleteRecursively()
    }
}
