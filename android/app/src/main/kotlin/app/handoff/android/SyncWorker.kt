package app.handoff.android

import android.content.Context
import androidx.work.CoroutineWorker
import androidx.work.WorkerParameters
import app.handoff.ffi.HandoffException

/** One sync round in the background (WorkManager, every 15 minutes with a network). */
class SyncWorker(context: Context, params: WorkerParameters) : CoroutineWorker(context, params) {
    override suspend fun doWork(): Result {
        val handoff = (applicationContext as HandoffApplication).handoff()
        if (handoff.enrolment() == null) return Result.success()
        return try {
            handoff.syncNow()
            Result.success()
        } catch (e: HandoffException.Offline) {
            Result.retry()
        } catch (e: HandoffException.DeviceRevoked) {
            // The core wiped the store; the app shows enrolment next time.
            Result.success()
        } catch (e: HandoffException) {
            Result.failure()
        }
    }
}
