# Offline module: only the built-in terraform_data resource, no provider.
# The token variable is declared the way the real modules declare it and is
# used only through its length, so the secret itself never reaches the state.
variable "hcloud_token" {
  type      = string
  sensitive = true
}

resource "terraform_data" "network" {
  input = {
    name         = "cz-net"
    token_length = nonsensitive(length(var.hcloud_token))
  }
}

resource "terraform_data" "server" {
  input = {
    name    = "cz-server-0"
    network = terraform_data.network.id
  }
}

output "network_id" {
  value = terraform_data.network.id
}

output "server_name" {
  value = terraform_data.server.output.name
}
