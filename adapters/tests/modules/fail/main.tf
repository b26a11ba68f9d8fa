# Offline module whose apply fails: a postcondition that never holds.
variable "hcloud_token" {
  type      = string
  sensitive = true
}

resource "terraform_data" "doomed" {
  input = "doomed"

  lifecycle {
    postcondition {
      condition     = self.output == "never"
      error_message = "catalyst-fail-module: the doomed resource refuses to exist."
    }
  }
}
