package app.handoff.android

import android.app.Application
import androidx.work.Constraints
import androidx.work.ExistingPeriodicWorkPolicy
import androidx.work.NetworkType
import androidx.work.PeriodicWorkRequestBuilder
import androidx.work.WorkManager
import app.handoff.sdk.Handoff
import java.io.File
import java.util.TimeZone
import java.util.concurrent.TimeUnit
import kotlinx.coroutines.sync.Mutex
import kotlinx.coroutines.sync.withLock

/** Holds the one open store of the process. */
class HandoffApplication : Application() {
    private val lock = Mutex()
    private var handoff: Handoff? = null

    /** [onProgress]: the first open after an update that changed the rules derives every task again. */
    suspend fun handoff(onProgress: ((done: Int, total: Int) -> Unit)? = null): Handoff = lock.withLock {
        handoff ?: run {
            val key = KeyVault(this).storeKey()
            try {
                Handoff.open(
                    path = File(noBackupFilesDir, "handoff.db").path,
                    key = key,
                    utcOffsetMinutes = TimeZone.getDefault().getOffset(System.currentTimeMillis()) / 60_000,
                    onProgress = onProgress,
                )
            } finally {
                // The open store needs it no more: not left in the heap.
                key.fill(0)
            }
        }.also { handoff = it }
    }

    override fun onCreate() {
        super.onCreate()
        // Before anything can sync: the relay's certificate is checked by
        // Android's trust manager, reached from Rust through this Context.
        PlatformTls.init(applicationContext)
        // Background sync when the app is closed; live sync runs while it is open.
        val work = PeriodicWorkRequestBuilder<SyncWorker>(15, TimeUnit.MINUTES)
            .setConstraints(Constraints.Builder().setRequiredNetworkType(NetworkType.CONNECTED).build())
            .build()
        WorkManager.getInstance(this)
            .enqueueUniquePeriodicWork("handoff-sync", ExistingPeriodicWorkPolicy.KEEP, work)
    }
}
