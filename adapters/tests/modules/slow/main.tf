# Offline module whose apply takes 30 s (a local-exec provisioner), to be
# interrupted by the runner's timeout. Tests rewrite `sleep 30` to converge.
variable "hcloud_token" {
  type      = string
  sensitive = true
}

resource "terraform_data" "quick" {
  input = "quick"
}

resource "terraform_data" "slow" {
  input = terraform_data.quick.output

  provisioner "local-exec" {
    command = "sleep 30"
  }
}
