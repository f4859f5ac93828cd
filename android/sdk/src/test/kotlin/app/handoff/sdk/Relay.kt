package app.handoff.sdk

import java.io.File
import java.nio.file.Files
import java.security.SecureRandom
import java.util.concurrent.TimeUnit

/**
 * The real relay binary (`-Dhandoff.relay=.../handoff-server`) serving a
 * fresh SQLite database on 127.0.0.1, and its admin commands.
 */
class Relay : AutoCloseable {
    private val bin: String = System.getProperty("handoff.relay")
        ?: error("set -Dhandoff.relay to the handoff-server binary")
    val dir: File = Files.createTempDirectory("handoff-relay").toFile()
    private val db = File(dir, "relay.db").path
    private val process: Process
    val url: String

    init {
        process = ProcessBuilder(bin, "--db", db, "serve", "--bind", "127.0.0.1:0")
            .redirectError(ProcessBuilder.Redirect.INHERIT)
            .apply { environment()["HANDOFF_LOG"] = "warn" }
            .start()
        // The relay prints its address once it accepts connections.
        val line = process.inputStream.bufferedReader().readLine()
            ?: error("the relay exited before listening")
        url = line.removePrefix("listening on ").trim()
    }

    fun admin(vararg args: String): String {
        val p = ProcessBuilder(bin, "--db", db, *args)
            .redirectErrorStream(true)
            .apply { environment()["HANDOFF_LOG"] = "warn" }
            .start()
        val out = p.inputStream.bufferedReader().readText()
        check(p.waitFor(30, TimeUnit.SECONDS) && p.exitValue() == 0) { "admin ${args.toList()} failed: $out" }
        return out
    }

    /** Returns (team id, the first manager's invite). */
    fun createTeam(name: String, manager: String): Pair<String, String> {
        val lines = admin("create-team", "--name", name, "--admin", manager, "--role", "manager").lines()
        return lines[0].removePrefix("team ") to lines[1].removePrefix("invite ")
    }

    fun invite(team: String, user: String, role: String): String =
        admin("invite", "--team", team, "--user", user, "--name", user, "--role", role).trim()

    override fun close() {
        process.destroyForcibly()
        process.waitFor(10, TimeUnit.SECONDS)
        dir.deleteRecursively()
    }
}

fun newKey(): ByteArray = ByteArray(32).also { SecureRandom().nextBytes(it) }

/** Poll [check] until it holds or [timeoutMs] passes. */
fun eventually(what: String, timeoutMs: Long = 15_000, check: () -> Boolean) {
    val deadline = System.currentTimeMillis() + timeoutMs
    while (!check()) {
        if (System.currentTimeMillis() > deadline) throw AssertionError("timed out waiting for: $what")
        Thread.sleep(20)
    }
}
