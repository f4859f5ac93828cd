package app.handoff.android

import android.os.Bundle
import android.view.WindowManager
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.activity.viewModels
import androidx.compose.material3.MaterialTheme
import androidx.compose.runtime.collectAsState
import androidx.compose.runtime.getValue
import app.handoff.android.ui.EnrolScreen
import app.handoff.android.ui.HomeScreen
import app.handoff.android.ui.NoKeyboardLearning
import app.handoff.android.ui.OpeningScreen
import app.handoff.android.ui.TaskDetailScreen

class MainActivity : ComponentActivity() {
    private val model: HandoffViewModel by viewModels()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        // Patient details on screen: no screenshots, and no picture of the
        // last screen in the app switcher (kept by the system, outside the
        // encrypted store, and shown after a wipe).
        window.setFlags(WindowManager.LayoutParams.FLAG_SECURE, WindowManager.LayoutParams.FLAG_SECURE)
        setContent {
            MaterialTheme {
                NoKeyboardLearning {
                    val opened by model.opened.collectAsState()
                    val updating by model.updating.collectAsState()
                    val enrolment by model.enrolment.collectAsState()
                    val detail by model.detail.collectAsState()
                    when {
                        !opened -> OpeningScreen(updating)
                        enrolment == null -> EnrolScreen(model)
                        detail != null -> TaskDetailScreen(model, detail!!)
                        else -> HomeScreen(model, enrolment!!)
                    }
                }
            }
        }
    }
}
