// File helpers: whole-file reads and atomic writes (temp name in the same directory, fsync, rename).
#pragma once
#include <string>
#include <string_view>

namespace oar {

std::string read_file(const std::string& path);  // throws oar::Error naming the path
void write_file_atomic(const std::string& path, std::string_view contents);
bool file_exists(const std::string& path);
bool dir_exists(const std::string& path);
std::string join_path(const std::string& a, const std::string& b);

}  // namespace oar
