package app.handoff.sdk

import app.handoff.ffi.AttentionItem
import app.handoff.ffi.CallAttempt
import app.handoff.ffi.Enrolment
import app.handoff.ffi.HandoffException
import app.handoff.ffi.MyQueue
import app.handoff.ffi.NewTask
import app.handoff.ffi.OpenProgressListener
import app.handoff.ffi.OwnerKpis
import app.handoff.ffi.ReviewItem
import app.handoff.ffi.SyncEvent
import app.handoff.ffi.SyncHandle
import app.handoff.ffi.SyncListener
import app.handoff.ffi.SyncReport
import app.handoff.ffi.TaskDetail
import app.handoff.ffi.TaskStore
import app.handoff.ffi.TaskSummary
import app.handoff.ffi.Team
import java.util.concurrent.atomic.AtomicBoolean
import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.launch
import kotlinx.coroutines.sync.Mutex
import kotlinx.coroutines.sync.withLock
import kotlinx.coroutines.withContext

/**
 * The lists the screens render, read together from the core. Nothing here
 * is computed in Kotlin: the core owns every view.
 */
data class Views(
    val queue: MyQueue,
    val pool: List<TaskSummary>,
    val inbox: List<ReviewItem>,
    val attention: List<AttentionItem>,
)

/** What the sync indicator shows. */
sealed interface SyncStatus {
    /** Not started, or stopped. */
    data object Idle : SyncStatus

    /** Up to date with the relay at [atMillis]. */
    data class Synced(val atMillis: Long, val report: SyncReport) : SyncStatus

    /** Far behind (new phone, or back after days away): [at] of [of] entries pulled so far. */
    data class CatchingUp(val at: Long, val of: Long) : SyncStatus {
        /** 0.0 to 1.0, for a progress bar. */
        val fraction: Float get() = if (of <= 0) 0f else (at.toFloat() / of.toFloat()).coerceIn(0f, 1f)
    }

    /** A long outbox going up (back after hours offline, weak signal): [sent] of [of] changes so far. */
    data class Sending(val sent: Long, val of: Long) : SyncStatus {
        /** 0.0 to 1.0, for a progress bar. */
        val fraction: Float get() = if (of <= 0) 0f else (sent.toFloat() / of.toFloat()).coerceIn(0f, 1f)
    }

    /** No signal or relay down; work waits in the outbox. Retrying after [retryInMs]. */
    data class Offline(val reason: String, val retryInMs: Long) : SyncStatus

    /** The relay refuses this device's credentials: enrol again. */
    data class AuthFailed(val code: String, val reason: String) : SyncStatus

    /** The practice removed this device; its data is gone. */
    data object Revoked : SyncStatus
}

/**
 * A phone's session with its store: views and sync state as [StateFlow]s,
 * commands as suspend functions that run off the caller's thread and
 * refresh the views when they return.
 *
 * Close it (`use {}`, or `onCleared()` in a ViewModel) to stop live sync and
 * release the store. Errors are [HandoffException]s; `userMessage()` gives
 * the sentence to show.
 */
class Handoff(
    private val store: TaskStore,
    private val io: CoroutineDispatcher = Dispatchers.IO,
) : AutoCloseable {
    private val scope = CoroutineScope(SupervisorJob() + io)
    private val refreshLock = Mutex()
    private val _views = MutableStateFlow<Views?>(null)
    private val _sync = MutableStateFlow<SyncStatus>(SyncStatus.Idle)
    /** The live loop's handle; set and cleared under `this`. */
    private var live: SyncHandle? = null
    /** How many times live sync was stopped; under `this`. */
    private var stops = 0L
    /** One start at a time (a start waits on the store, not under `this`). */
    private val starting = Mutex()

    /** `null` until the first [refresh] (and while not enrolled). */
    val views: StateFlow<Views?> = _views.asStateFlow()
    val syncStatus: StateFlow<SyncStatus> = _sync.asStateFlow()

    companion object {
        /**
         * Open the store at [path] with the 32-byte [key] from the
         * Keystore/Keychain. Throws [HandoffException.WrongKey] for a wrong key.
         * The first open after an app update that changed the clinic's rules
         * derives every task again: [onProgress] hears `done` of `total` (on
         * [io]) so the app can show it; a usual open does not call it.
         */
        suspend fun open(
            path: String,
            key: ByteArray,
            utcOffsetMinutes: Int = 0,
            io: CoroutineDispatcher = Dispatchers.IO,
            onProgress: ((done: Int, total: Int) -> Unit)? = null,
        ): Handoff = withContext(io) {
            val progress = onProgress?.let { tell ->
                object : OpenProgressListener {
                    override fun onProgress(done: UInt, total: UInt) = tell(done.toInt(), total.toInt())
                }
            }
            Handoff(TaskStore.open(path, key, utcOffsetMinutes, progress), io)
        }.also { it.refresh() }
    }

    suspend fun enrolment(): Enrolment? = withContext(io) { store.enrolment() }

    suspend fun team(): Team? = withContext(io) { store.team() }

    /**
     * Redeem an invite, fetch the team and its tasks; [syncStatus] shows how far that has come.
     * Cut short ([HandoffException.Offline]), call it again: it fetches the rest.
     */
    suspend fun enrol(relayUrl: String, invite: String): Enrolment {
        try {
            return withContext(io) { store.enrol(relayUrl, invite, listener) }
        } catch (e: HandoffException.Offline) {
            _sync.value = SyncStatus.Offline(e.reason, 0)
            throw e
        } finally {
            refresh()
        }
    }

    /** Re-read every list from the core. */
    suspend fun refresh() {
        refreshLock.withLock {
            _views.value = withContext(io) {
                if (store.enrolment() == null) {
                    null
                } else {
                    Views(store.myQueue(), store.sharedPool(), store.reviewInbox(), store.needsAttention())
                }
            }
        }
    }

    suspend fun taskDetail(taskId: String): TaskDetail = withContext(io) { store.taskDetail(taskId) }

    suspend fun kpis(fromMillis: Long, toMillis: Long): List<OwnerKpis> =
        withContext(io) { store.kpis(fromMillis, toMillis) }

    // ---- commands: durable when they return; live sync is nudged ------

    private suspend fun <T> command(block: TaskStore.() -> T): T {
        val result = withContext(io) { store.block() }
        // Under the lock: a live loop that ends meanwhile is closed only
        // once it is no longer `live`.
        synchronized(this) { live?.syncNow() }
        refresh()
        return result
    }

    suspend fun delegate(task: NewTask): String = command { delegate(task) }
    suspend fun assign(taskId: String, to: String) = command { assign(taskId, to) }
    suspend fun claim(taskId: String) = command { claim(taskId) }
    suspend fun acknowledge(taskId: String, note: String = "") = command { acknowledge(taskId, note) }
    suspend fun start(taskId: String) = command { start(taskId) }
    suspend fun tickChecklistItem(taskId: String, item: UInt) = command { tickChecklistItem(taskId, item) }
    suspend fun logCallAttempt(taskId: String, attempt: CallAttempt) = command { logCallAttempt(taskId, attempt) }
    suspend fun comment(taskId: String, text: String) = command { comment(taskId, text) }
    suspend fun submit(taskId: String, note: String = "") = command { submit(taskId, note) }
    suspend fun approve(taskId: String, note: String = "") = command { approve(taskId, note) }
    suspend fun returnWithFeedback(taskId: String, feedback: String) = command { returnWithFeedback(taskId, feedback) }
    suspend fun complete(taskId: String, note: String = "") = command { complete(taskId, note) }
    suspend fun cancel(taskId: String, reason: String) = command { cancel(taskId, reason) }
    suspend fun escalate(taskId: String, reason: String) = command { escalate(taskId, reason) }
    suspend fun dismissAttention(key: String) = command { dismissAttention(key) }

    // ---- sync -----------------------------------------------------------

    /** One round now (pull-to-refresh, or a background job). */
    suspend fun syncNow(): SyncReport {
        try {
            val report = withContext(io) { store.syncNow() }
            _sync.value = SyncStatus.Synced(System.currentTimeMillis(), report)
            return report
        } catch (e: HandoffException.Offline) {
            _sync.value = SyncStatus.Offline(e.reason, 0)
            throw e
        } catch (e: HandoffException.DeviceRevoked) {
            _sync.value = SyncStatus.Revoked
            throw e
        } catch (e: HandoffException.RelayRejected) {
            // Credentials, member or app version refused: shown as live
            // sync shows it, not left on the last "synced".
            if (e.endsSync()) _sync.value = SyncStatus.AuthFailed(e.code, e.reason)
            throw e
        } finally {
            refresh()
        }
    }

    /** What the core's sync tells: [syncStatus] and [views] follow. */
    private val listener = object : SyncListener {
        override fun onSyncEvent(event: SyncEvent) {
            _sync.value = when (event) {
                is SyncEvent.Synced -> SyncStatus.Synced(System.currentTimeMillis(), event.report)
                is SyncEvent.Offline -> SyncStatus.Offline(event.reason, event.retryInMs.toLong())
                is SyncEvent.AuthFailed -> SyncStatus.AuthFailed(event.code, event.reason)
                is SyncEvent.Revoked -> SyncStatus.Revoked
                is SyncEvent.CatchingUp -> SyncStatus.CatchingUp(event.at.toLong(), event.of.toLong())
                is SyncEvent.Sending -> SyncStatus.Sending(event.sent.toLong(), event.of.toLong())
                is SyncEvent.DataChanged -> _sync.value
            }
            // The core's live loop has ended: a later [startLiveSync] (after
            // enrolling again, say) starts a new one.
            if (event is SyncEvent.Revoked || event is SyncEvent.AuthFailed) {
                val ended = synchronized(this@Handoff) { live.also { live = null } }
                ended?.let { scope.launch { it.close() } }
            }
            // Called on the core's sync thread: hand the re-read to ours.
            // A long catch-up changes data page after page: one re-read
            // waiting is enough for all the pages that land meanwhile.
            if ((event is SyncEvent.DataChanged || event is SyncEvent.Revoked) &&
                refreshWaiting.compareAndSet(false, true)
            ) {
                scope.launch {
                    refreshWaiting.set(false)
                    // Nothing to throw to: a store wiped or closed
                    // meanwhile leaves the views as the next refresh reads
                    // them (an exception here would end the app).
                    try {
                        refresh()
                    } catch (e: HandoffException) {
                        _views.value = null
                    } catch (e: IllegalStateException) {
                        _views.value = null
                    }
                }
            }
        }
    }
    private val refreshWaiting = AtomicBoolean(false)

    /**
     * Keep syncing while the app is open; [syncStatus] and [views] follow.
     * On [io], and not under the lock commands take on the caller's
     * thread: the first start builds the sync engine, which reads the
     * store, and may wait on a long merge holding it.
     */
    suspend fun startLiveSync(): Unit = withContext(io) {
        starting.withLock {
            val asked = synchronized(this@Handoff) {
                if (live != null) return@withLock
                stops
            }
            val handle = store.startSync(listener)
            // Stopped meanwhile (the screen closed): not kept.
            val kept = synchronized(this@Handoff) {
                (stops == asked).also { if (it) live = handle }
            }
            if (!kept) {
                handle.stop()
                handle.close()
            }
        }
    }

    fun stopLiveSync() {
        val stopped = synchronized(this) {
            stops++
            live.also { live = null }
        }
        stopped?.let {
            it.stop()
            it.close()
        }
        if (_sync.value !is SyncStatus.Revoked) _sync.value = SyncStatus.Idle
    }

    override fun close() {
        stopLiveSync()
        scope.cancel()
        store.close()
    }
}
