package app.handoff.android.ui

import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.padding
import androidx.compose.material3.Button
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.unit.dp
import app.handoff.android.HandoffViewModel

/** Redeem the invite code the practice admin gave. */
@Composable
fun EnrolScreen(model: HandoffViewModel) {
    var relay by remember { mutableStateOf("https://") }
    var invite by remember { mutableStateOf("") }
    Column(Modifier.padding(24.dp)) {
        Text("Join your practice")
        OutlinedTextField(relay, { relay = it }, label = { Text("Relay address") })
        OutlinedTextField(invite, { invite = it }, label = { Text("Invite code") })
        Button(onClick = { model.enrol(relay.trim(), invite.trim()) }) { Text("Join") }
        MessageDialog(model)
    }
}
