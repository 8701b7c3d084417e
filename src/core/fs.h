// File helpers: whole-file reads and atomic writes (temp name in the same directory, fsync, rename).
#pragma once
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace oar {

std::string read_file(const std::string& path);  // throws oar::Error naming the path
void write_file_atomic(const std::string& path, std::string_view contents);
bool file_exists(const std::string& path);
bool dir_exists(const std::string& path);
std::string join_path(const std::string& a, const std::string& b);

// Writes a whole directory so that a killed run leaves nothing partial: `fill` writes into a fresh temporary
// directory beside out_path, which is then renamed into place. An existing out_path is an error unless `force`
// (then it is replaced), and never replaced when it holds one of `inputs`. Throws oar::Error naming the path.
void write_directory_atomically(const std::string& out_path, bool force, const std::vector<std::string>& inputs,
                                const std::function<void(const std::string& tmp_dir)>& fill);

}  // namespace oar
